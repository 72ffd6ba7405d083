"""Prompt extension: rewrite a short prompt into a detailed one, with a local causal LM or an HTTP endpoint.

Any failure (no model, no network, a bad answer) is reported as a warning and the original prompt is kept:
prompt extension may improve a video, it must never stop one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from openwan.endpoints import chat_completion

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You rewrite prompts for a text-to-video model. Expand the user's prompt into one vivid paragraph of at most "
    "80 words: keep every subject, colour, action and direction it names, add concrete detail about appearance, "
    "motion, camera and lighting, and invent nothing that contradicts it. Answer with the rewritten prompt only."
)


def _clean(text: str, original: str) -> str:
    text = text.strip().strip('"').strip()
    if not text:
        raise ValueError("the model returned an empty prompt")
    return text


def extend_with_local_model(prompt: str, model_dir: str | Path, max_new_tokens: int = 160) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]
    if getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
    else:
        ids = tokenizer(f"{SYSTEM_PROMPT}\n\nPrompt: {prompt}\nRewritten:", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
    return _clean(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True), prompt)


def extend_with_endpoint(prompt: str, url: str, model: str = "default", api_key: str | None = None,
                         timeout: float = 30.0) -> str:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint (``url`` is its base, e.g. http://host:8000/v1)."""
    body = {"model": model, "temperature": 0.2,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}]}
    return _clean(chat_completion(url, body, api_key or "", timeout, retries=0), prompt)


def extend_prompt(prompt: str, target: str, *, model: str = "default", api_key: str | None = None) -> str:
    """``target`` is a local model folder or an http(s) endpoint; on any failure, warn and return ``prompt``."""
    try:
        if target.startswith(("http://", "https://")):
            return extend_with_endpoint(prompt, target, model=model, api_key=api_key)
        if not Path(target).is_dir():
            raise FileNotFoundError(f"{target} is neither a model folder nor an http(s) URL")
        return extend_with_local_model(prompt, target)
    except Exception as err:  # noqa: BLE001 — by design nothing here may stop generation
        log.warning("prompt extension failed (%s: %s); keeping the original prompt", type(err).__name__, err)
        return prompt
