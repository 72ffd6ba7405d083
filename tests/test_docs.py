"""Every example in README.md and docs/ runs, and nothing in the sources tells the history of the work.

A fenced ```bash or ```python block is an example. The blocks of one page run in order in one scratch folder (a
block may use what an earlier one wrote), against tiny random-weight releases written in the released layouts:
a path such as /data/Wan2.1-T2V-1.3B is replaced by such a folder. Sizes, frame counts and steps are turned down
by flags or overrides the harness appends (argparse and dotted overrides take the last value); the commands and
flags as written still run. A block that cannot run here is marked in the page, right above it, with
``<!-- not run: REASON -->``; it is still checked (its `openwan` commands parse, the scripts and flags it names
exist, its Python compiles and its imports resolve). ``<!-- slow: REASON -->`` runs a page's examples in the slow
tier only.
"""

from __future__ import annotations

import ast
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from openwan.checkpoints.convert import convert_release
from openwan.checkpoints.release import save_release
from openwan.cli.main import build_parser, main
from openwan.cli.train_vae import resolve_config
from openwan.configs import DIT_PRESETS
from openwan.data.manifest import ClipRecord, read_manifest, write_manifest
from openwan.data.video import read_video, save_image, save_video
from openwan.train import load_config
from tiny import tiny_components

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_LANGS = {"bash": "bash", "sh": "bash", "shell": "bash", "console": "bash", "python": "python", "py": "python"}
MARK = re.compile(r"^<!--\s*(not run|slow):\s*(.+?)\s*-->$")

# Most not-run blocks a page may hold (a new one is a decision, made here, not a silent skip).
NOT_RUN_ALLOWED = {"README.md": 1, "benchmarks.md": 11, "distributed.md": 4, "generate.md": 1, "train.md": 2,
                   "train-vae.md": 0, "convert.md": 0, "demo_model.md": 2, "evaluation.md": 1,
                   "vae_compression.md": 1}

# Release paths the pages name, and what stands in for them: (DiT preset, layout).
RELEASES = {
    "Wan2.1-T2V-1.3B": ("tiny", "official"),
    "Wan2.1-T2V-1.3B-Diffusers": ("tiny", "diffusers"),
    "Wan2.1-T2V-14B": ("tiny", "official"),
    "Wan2.1-I2V-14B-480P": ("tiny-i2v", "official"),
    "Wan2.1-I2V-14B-720P": ("tiny-i2v", "official"),
    "Wan2.1-FLF2V-14B-720P": ("tiny-flf2v", "official"),
    "Wan2.2-T2V-A14B": ("tiny", "experts"),
    "Wan2.1-VACE-1.3B": ("tiny-vace", "official"),
    "Wan2.2-TI2V-5B": ("tiny-ti2v", "official"),
}
DATASETS = {"my-clips"}  # /data/<name>/manifest.jsonl: a few synthetic clips and images
LORAS = {"my-lora.safetensors"}  # a random LoRA of the stand-in T2V DiT, in the official (ComfyUI) format


@dataclass
class Block:
    page: Path
    line: int
    lang: str
    code: str
    mark: str | None = None  # "not run" | "slow"
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def read_blocks(page: Path) -> list[Block]:
    """The fenced blocks of ``page`` in a language that runs, with the mark right above each (if any)."""
    blocks, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^```\s*([\w+-]*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        lang = RUN_LANGS.get(m.group(1).lower())
        if lang:
            above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = MARK.match(above)
            blocks.append(Block(page, i + 1, lang, "\n".join(lines[i + 1:end]),
                                *(mark.groups() if mark else (None, ""))))
        i = end + 1
    return blocks


def commands(code: str) -> list[list[str]]:
    """The shell commands of a bash block, continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [words for line in joined.splitlines() if (words := shlex.split(line, comments=True))]


def openwan_argv(words: list[str]) -> list[str] | None:
    """The argv after ``openwan`` in ``openwan ...``, ``python -m openwan ...`` or ``torchrun ... -m openwan ...``."""
    if words[0] == "openwan":
        return words[1:]
    if words[0] in ("python", "python3", "torchrun") and "-m" in words:
        at = words.index("-m")
        if words[at + 1] == "openwan":
            return words[at + 2:]
    return None


# ------------------------------------------------------------------------------------------ the scratch world


def _write_release(folder: Path, preset: str, layout: str) -> Path:
    if layout == "experts":
        high, low = tiny_components(preset, seed=0), tiny_components(preset, seed=5)
        return save_release(folder, **high, dit_low=low["dit"], boundary=0.875)
    if layout == "diffusers":
        official = save_release(folder.with_name(folder.name + "-official"), **tiny_components(preset))
        convert_release(official, folder, "diffusers")
        return folder
    return save_release(folder, **tiny_components(preset))


def _write_clips(folder: Path) -> None:
    """Eight synthetic 17-frame clips and, as images, the first frames of four of them, in one manifest."""
    assert main(["data", "synth", "--out", str(folder), "--num", "8", "--seed", "0"]) == 0
    clips = read_manifest(folder / "manifest.jsonl")
    images = []
    for i, clip in enumerate(clips[:4]):
        path = save_image(read_video(clip.path)[0], folder / f"image-{i}.png")
        images.append(ClipRecord(str(path), clip.caption, 1, clip.fps, clip.width, clip.height))
    write_manifest(clips + images, folder / "manifest.jsonl")


def _write_lora(path: Path, rank: int = 4) -> None:
    dit = tiny_components("tiny")["dit"]
    g = torch.Generator().manual_seed(3)
    state = {}
    for name, module in dit.named_modules():
        if isinstance(module, torch.nn.Linear) and re.match(r"blocks\.\d+\.(self_attn|cross_attn)\.[qkvo]$", name):
            state[f"diffusion_model.{name}.lora_A.weight"] = 0.1 * torch.randn(rank, module.in_features, generator=g)
            state[f"diffusion_model.{name}.lora_B.weight"] = 0.1 * torch.randn(module.out_features, rank, generator=g)
            state[f"diffusion_model.{name}.alpha"] = torch.tensor(float(rank))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))


class Scratch:
    """Tiny releases and datasets in place of the real paths the pages name, built on first use."""

    def __init__(self, root: Path):
        self.root = root
        self.made: dict[str, Path] = {}

    def path(self, name: str) -> Path:
        if name not in self.made:
            where = self.root / "data" / name
            if name in RELEASES:
                _write_release(where, *RELEASES[name])
            elif name in DATASETS:
                _write_clips(where)
            elif name in LORAS:
                _write_lora(where)
            else:
                raise AssertionError(f"the docs name /data/{name}: add a stand-in for it to RELEASES or DATASETS in "
                                     "tests/test_docs.py")
            self.made[name] = where
        return self.made[name]

    def substitute(self, text: str) -> str:
        return re.sub(r"/data/([\w.-]+)", lambda m: str(self.path(m.group(1))), text)

    def workdir(self, page: Path) -> Path:
        """A fresh folder to run ``page`` in: the inputs the pages use, configs/ with its paths substituted, and
        src/ (the bundled model's folder is src/openwan/weights/openwan-demo in a checkout)."""
        work = self.root / "work" / page.stem
        work.mkdir(parents=True)
        g = torch.Generator().manual_seed(0)
        for name in ("first.png", "last.png", "a.png", "b.png"):
            save_image(torch.rand(40, 48, 3, generator=g), work / name)
        for name in ("in.mp4", "input.mp4"):
            save_video(torch.rand(9, 32, 32, 3, generator=g), work / name, fps=16)
        (work / "configs").mkdir()
        for cfg in sorted((REPO / "configs").glob("*.yaml")):
            (work / "configs" / cfg.name).write_text(self.substitute(cfg.read_text()))
        (work / "src").symlink_to(REPO / "src")  # the bundled model, as a checkout holds it
        return work


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return Scratch(tmp_path_factory.mktemp("docs"))


# ------------------------------------------------------------------------------------------ turning sizes down


def _fast_generate(argv: list[str]) -> list[str]:
    task = argv[argv.index("--task") + 1] if "--task" in argv else "t2v"
    # ti2v's image sets the aspect ratio at multiples of 32: an area of 64*64 leaves room for one of 32x32 and more
    fast = ["--sample-steps", "2", "--size", "64*64" if task.startswith("ti2v") else "32*32"]
    if task != "t2i":
        fast += ["--frame-num", "5"]
    return argv + fast


def _fast_train(argv: list[str], work: Path) -> list[str]:
    if "--export" in argv:
        return argv
    config = argv[argv.index("--config") + 1] if "--config" in argv else None
    given = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
    cfg = load_config(work / config if config else None, given)
    fast = ["log.progress=false", "log.every=1", "sample.every=0", "compile=false", "data.num_workers=0",
            "checkpoint.keep_last=2"]
    if cfg.model.path is None and DIT_PRESETS[cfg.model.preset].dim >= 1536:  # a released size
        fast.append("model.preset=tiny")
    for i, stage in enumerate(cfg.stages):
        small = sorted({(1 if f == 1 else 5, 32, 32) for f, _, _ in stage.buckets})
        fast += [f"stages.{i}.steps=2", f"stages.{i}.batch_size=1", f"stages.{i}.buckets={[list(b) for b in small]}"]
    return argv + fast


def _fast_train_vae(argv: list[str]) -> list[str]:
    if "--print-config" in argv:
        return argv
    cfg = resolve_config(build_parser().parse_args(argv + ["--print-config"]))
    fast = ["--steps", "2", "--batch-size", "1", "--workers", "0", "--size", "32", "--log-every", "1",
            "--save-every", "0"]
    if cfg.stage > 1:
        fast += ["--frames", "5"]
    if cfg.model.preset == "wan2.1" and cfg.model.init is None:  # the released width
        fast += ["--preset", "tiny"]
    return argv + fast


def fast_argv(argv: list[str], work: Path) -> list[str]:
    command = argv[0]
    sub = argv[1] if len(argv) > 1 else ""
    if command == "generate":
        return _fast_generate(argv)
    if command == "train":
        return _fast_train(argv, work)
    if command == "train-vae":
        return _fast_train_vae(argv)
    if command == "eval" and sub == "prompts":
        return argv + ["--seeds", "0", "--limit", "2", "--no-videos"]
    if command == "eval" and sub == "vae":
        return argv + ["--num-synthetic", "2", "--photos"]
    if command == "data" and sub == "synth":
        return argv + ["--num", "8"]
    return argv


def fast_python(code: str) -> str:
    """openwan's and diffusers' size, frame and step arguments turned down."""
    for pattern, small in ((r"\bsize=\(\d+, \d+\)", "size=(32, 32)"), (r"\b(frame_num|num_frames)=\d+", r"\1=5"),
                           (r"\b(sample_steps|num_inference_steps)=\d+", r"\1=2"),
                           (r"\b(height|width)=\d+", r"\1=32")):
        code = re.sub(pattern, small, code)
    return re.sub(r"\bBucket\((\d+), \d+, \d+\)", lambda m: f"Bucket({1 if m.group(1) == '1' else 5}, 32, 32)", code)


def newest_steps(text: str, work: Path) -> str:
    """A step folder named in the page (``run/step-00002000``) is the run's newest here (its steps were cut)."""
    def newest(m: re.Match) -> str:
        run = work / m.group(1)
        found = sorted(run.glob("step-*"))
        return str(found[-1].relative_to(work)) if found else m.group(0)
    return re.sub(r"([\w./-]+)/step-\d{8}", newest, text)


# ------------------------------------------------------------------------------------------ running a page


def run_bash(block: Block, scratch: Scratch, work: Path) -> None:
    for words in commands(scratch.substitute(block.code)):
        words = [newest_steps(w, work) for w in words]
        argv = openwan_argv(words)
        assert argv is not None, (f"{block}: `{' '.join(words)}` is not an openwan command the harness can run; "
                                  "mark the block <!-- not run: REASON --> or run it through openwan")
        code = main(fast_argv(argv, work))
        assert code == 0, f"{block}: `{' '.join(words)}` exited with {code}"


def run_python(block: Block, scratch: Scratch, namespace: dict) -> None:
    code = compile(fast_python(scratch.substitute(block.code)), str(block), "exec")
    exec(code, namespace)  # noqa: S102 - the page's own example


def pages_with_examples():
    for page in PAGES:
        blocks = read_blocks(page)
        if not any(b.mark != "not run" for b in blocks):
            continue
        slow = any(b.mark == "slow" for b in blocks)
        yield pytest.param(page, id=page.name, marks=[pytest.mark.slow] if slow else [])


@pytest.mark.parametrize("page", list(pages_with_examples()))
def test_examples_run(page, scratch, monkeypatch, one_thread):
    work = scratch.workdir(page)
    monkeypatch.chdir(work)
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for block in read_blocks(page):
        if block.mark == "not run":
            continue
        if block.lang == "bash":
            run_bash(block, scratch, work)
        else:
            run_python(block, scratch, namespace)
        ran += 1
    assert ran


# ------------------------------------------------------------------------------------------ blocks not run


def _check_command(block: Block, words: list[str]) -> None:
    env = []
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value prefixes
        env.append(words.pop(0).split("=")[0])
    argv = openwan_argv(words)
    if argv is not None:
        try:
            build_parser().parse_args(argv)
        except SystemExit as err:
            raise AssertionError(f"{block}: `openwan {' '.join(argv)}` does not parse") from err
        return
    tool = words[0]
    if tool in ("python", "python3", "bash") and len(words) > 1:
        script = REPO / words[1]
        assert script.is_file(), f"{block}: {words[1]} does not exist"
        text = script.read_text()
        for flag in (w.split("=")[0] for w in words[2:] if w.startswith("--")):
            assert f'"{flag}"' in text, f"{block}: {words[1]} has no option {flag}"
        for name in env:
            assert re.search(rf"\b{name}\b", text), f"{block}: {words[1]} does not read {name}"
        return
    if tool == "make":
        makefile = (REPO / "Makefile").read_text()
        for target in (w for w in words[1:] if "=" not in w):
            assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{block}: the Makefile has no {target}"
        return
    if tool == "pip":
        return
    raise AssertionError(f"{block}: the harness cannot check `{' '.join(words)}`; add a rule to _check_command")


def _check_python(block: Block) -> None:
    tree = ast.parse(block.code, str(block))
    imports = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    exec(compile(ast.Module(body=imports, type_ignores=[]), str(block), "exec"), {})  # noqa: S102


def test_blocks_not_run_are_marked_few_and_still_checked():
    counts: dict[str, int] = {}
    for page in PAGES:
        for block in read_blocks(page):
            if block.mark != "not run":
                continue
            assert len(block.reason) > 8, f"{block}: say why the block does not run"
            counts[page.name] = counts.get(page.name, 0) + 1
            if block.lang == "bash":
                for words in commands(block.code):
                    _check_command(block, words)
            else:
                _check_python(block)
    too_many = {name: n for name, n in counts.items() if n > NOT_RUN_ALLOWED.get(name, 0)}
    assert not too_many, f"pages with more blocks marked not run than allowed: {too_many}"


def test_marks_sit_right_above_a_block():
    """A mark anywhere else would skip nothing and say nothing: it must be the line above a fence."""
    for page in PAGES:
        lines = page.read_text().splitlines()
        for i, line in enumerate(lines):
            if MARK.match(line.strip()):
                after = next((x for x in lines[i + 1:] if x.strip()), "")
                assert after.startswith("```"), f"{page.name}:{i + 1}: a mark must be followed by a code block"


def test_harness_finds_examples_in_every_page_that_has_code():
    assert read_blocks(REPO / "README.md"), "README.md has no examples"
    lone = [p.name for p in PAGES if "```" in p.read_text() and not read_blocks(p)]
    assert not lone, f"pages whose code blocks are in no language the harness runs: {lone}"


# ------------------------------------------------------------------------------------------ no history

NARRATIVE = [
    (re.compile(r"\bsessions?\b", re.I), "a session"),
    (re.compile(r"runs/r\d"), "a dated run folder"),
    (re.compile(r"\bwe tried\b", re.I), "'we tried'"),
    (re.compile(r"\battempts?\b", re.I), "an attempt"),
    (re.compile(r"\b(not shipped|shipped (until|since))\b", re.I), "what was shipped when"),
]
NARRATIVE_ALLOWED: dict[str, set[str]] = {}  # file (relative to the repo) -> words it may use legitimately


def _sources() -> list[Path]:
    files = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    for folder in ("src", "recipes"):
        files += [p for p in sorted((REPO / folder).rglob("*")) if p.suffix in (".py", ".sh", ".md", ".yaml")
                  and "egg-info" not in str(p)]
    return files


def test_no_narrative_of_past_work():
    found = []
    for path in _sources():
        rel = str(path.relative_to(REPO))
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, what in NARRATIVE:
                m = pattern.search(line)
                if m and m.group(0).lower() not in NARRATIVE_ALLOWED.get(rel, set()):
                    found.append(f"{rel}:{n}: {what}: {line.strip()[:100]}")
    assert not found, "history in the sources (say what is true now):\n" + "\n".join(found)


def test_narrative_search_catches_what_it_looks_for(tmp_path):
    lines = ["Tried in the fourth session.", "see runs/r24/run.sh", "We tried a wider VAE.", "A second attempt.",
             "The model shipped until then."]
    for line in lines:
        assert any(p.search(line) for p, _ in NARRATIVE), line
    assert not any(p.search("an onnxruntime InferenceSession") for p, _ in NARRATIVE)


def test_read_blocks_sees_marks_and_languages(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n\n<!-- not run: needs 8 GPUs -->\n```bash\ntorchrun x\n```\n\n```python\nx = 1\n```\n"
                    "```\nplain\n```\n<!-- slow: long -->\n\n```sh\nopenwan generate \\\n  --prompt 'a b'  # c\n```\n")
    blocks = read_blocks(page)
    assert [(b.lang, b.mark, b.reason, b.line) for b in blocks] == [
        ("bash", "not run", "needs 8 GPUs", 4), ("python", None, "", 8), ("bash", "slow", "long", 16)]
    assert commands(blocks[2].code) == [["openwan", "generate", "--prompt", "a b"]]



def test_readme_opens_with_the_quickstart():
    first = read_blocks(REPO / "README.md")[0]
    assert [words[:2] for words in commands(first.code)] == [["make", "demo"], ["make", "test"]]
