import sys

from openwan.cli.main import main

sys.exit(main())
