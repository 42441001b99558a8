"""Chat SFT data (data.layout = "chat"): conversations in JSON lines -> one fixed-length window per example, the prompt
given and the response the diffusion's target (LLaDA's SFT, Nie et al. 2025, §2.3 and its EVAL.md; seed 002's tulu
setting).

Each line of a `.jsonl` file under data.path is one conversation, either
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   (the last message the assistant's)
or  {"prompt": "...", "response": "..."}.
The response is the last assistant message; everything before it is the prompt, rendered with `data.chat_template`:

* "plain" (the default; any tokenizer): BOS, then one line per message, "User: ...", "Assistant: ...", "System: ...",
  and "Assistant: " opening the response;
* "tokenizer": the chat template of the tokenizer's folder (tokenizer_config.json's `chat_template`, a Jinja
  template, rendered with jinja2 as transformers renders it: the prompt with add_generation_prompt=True; the response
  is what the whole conversation adds to it, its end-of-turn token included).

Window (`ChatExamples.window`): prompt ids (marked with special_tokens.FIXED_FLAG: never masked, never scored), the
response ids, EOS, then `data.chat_fill` up to data.seq_len:
* "eos" (LLaDA): the EOS repeated; those EOS are masked and scored like the response, so the model learns where the
  answer ends and fills the rest with EOS, which a sampler with eos_stop closes;
* "pad": the tokenizer's pad id, never masked nor scored (the padded layout's rule; dllm's recommendation).
A prompt longer than seq_len - 2 tokens keeps its last seq_len - 2 (the response needs room); a response that does
not fit is cut (its EOS then falls off). Both are counted in the summary.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib

import numpy as np

from dlm_jax import special_tokens
from dlm_jax.data import corpus
from dlm_jax.errors import ConfigError

TEMPLATES = ("plain", "tokenizer")
FILLS = ("eos", "pad")
ROLE_NAMES = {"system": "System", "user": "User", "assistant": "Assistant"}


def read_conversations(path: str, flag: str = "data.path") -> list[list[dict]]:
  """The conversations of the .jsonl files named by `path` (files, folders, comma-separated; resolved as every
  data.path is, $DLM_DATA_DIR included), as message lists."""
  files = [f for f in corpus.resolve(path, flag) if f.suffix == ".jsonl"]
  if not files:
    raise corpus.DataError(f"{flag}={path}: no .jsonl file there. data.layout='chat' reads JSON lines of "
                           '{"messages": [{"role": ..., "content": ...}, ...]} or {"prompt": ..., "response": ...}.')
  conversations = []
  for file in files:
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise corpus.DataError(f"{file}:{number}: not valid JSON ({e}).") from None
      if "messages" in record:
        messages = record["messages"]
      elif "prompt" in record and "response" in record:
        messages = [{"role": "user", "content": record["prompt"]}, {"role": "assistant", "content": record["response"]}]
      else:
        raise corpus.DataError(f"{file}:{number}: a chat line needs 'messages' (or 'prompt' and 'response').")
      if not messages or messages[-1].get("role") != "assistant" or \
          any(m.get("role") not in ROLE_NAMES or not isinstance(m.get("content"), str) for m in messages):
        raise corpus.DataError(f"{file}:{number}: messages must have roles {tuple(ROLE_NAMES)} with string contents "
                               "and end with the assistant's.")
      conversations.append(messages)
  if not conversations:
    raise corpus.DataError(f"{flag}={path}: the .jsonl files hold no conversation.")
  return conversations


def plain_prompt(messages: list[dict]) -> str:
  """The plain template's text of `messages` followed by the opening of the assistant's answer."""
  return "".join(f"{ROLE_NAMES[m['role']]}: {m['content']}\n" for m in messages) + "Assistant: "


def tokenizer_template(tokenizer) -> str:
  """The Jinja chat template of a Hugging Face tokenizer's folder (tokenizer_config.json's chat_template)."""
  source = getattr(tokenizer, "source", "")
  folder = pathlib.Path(source)
  folder = folder if folder.is_dir() else folder.parent
  config_file = folder / "tokenizer_config.json"
  template = json.loads(config_file.read_text(encoding="utf-8")).get("chat_template") if config_file.is_file() else None
  if not template:
    raise ConfigError(f"data.chat_template='tokenizer': the tokenizer at {source or '(not a Hugging Face folder)'} has "
                      "no chat_template in its tokenizer_config.json. Use data.chat_template='plain'.")
  return template


@functools.lru_cache(maxsize=8)
def _compiled_template(source: str):
  """A Jinja chat template compiled once (as transformers compiles it), not once per conversation."""
  import jinja2
  return jinja2.Environment(trim_blocks=True, lstrip_blocks=True).from_string(source)


def render(messages: list[dict], template: str, tokenizer) -> tuple[str, str]:
  """(prompt text, response text) of one conversation under `template` (module docstring)."""
  response = messages[-1]["content"]
  if template == "plain":
    return plain_prompt(messages[:-1]), response
  try:
    import jinja2
  except ImportError as e:
    raise ConfigError("data.chat_template='tokenizer' renders the tokenizer's Jinja template with jinja2: pip "
                      "install jinja2, or use data.chat_template='plain'.") from e
  del jinja2  # installed: _compiled_template imports it
  compiled = _compiled_template(tokenizer_template(tokenizer))
  names = {f"{role}_token": tokenizer.decode_exact([getattr(tokenizer.special, role)])
           for role in ("bos", "eos") if hasattr(tokenizer, "decode_exact")}
  prompt = compiled.render(messages=messages[:-1], add_generation_prompt=True, **names)
  whole = compiled.render(messages=messages, add_generation_prompt=False, **names)
  if not whole.startswith(prompt):
    raise ConfigError("The tokenizer's chat template does not render the conversation as its prompt followed by the "
                      "response; use data.chat_template='plain'.")
  return prompt, whole[len(prompt):]


@dataclasses.dataclass
class ChatExamples:
  """Encoded conversations: `prompts[i]` and `responses[i]` int32 id arrays; `fill` "eos" or "pad". Has the
  interface of pipeline.Documents (len, window), so the padded layout's iterator and evaluation windows read it."""
  prompts: list
  responses: list
  fill: str = "eos"
  bos: bool = True  # the plain template starts each window with BOS (a tokenizer's template brings its own)

  def __len__(self) -> int:
    return len(self.prompts)

  def window(self, index: int, seq_len: int, special) -> np.ndarray:
    """int32 [seq_len]: the prompt ids marked FIXED_FLAG, the response, EOS, then the fill (module docstring)."""
    prompt = np.asarray(self.prompts[index], np.int32)
    if self.bos:
      prompt = np.concatenate([[special.bos], prompt]).astype(np.int32)
    prompt = prompt[-(seq_len - 2):]
    fill = special.eos if self.fill == "eos" else special.pad
    row = np.full((seq_len,), fill, np.int32)
    body = np.concatenate([prompt, np.asarray(self.responses[index], np.int32), [special.eos]])[:seq_len]
    row[:len(body)] = body
    fixed = np.zeros((seq_len,), bool)
    fixed[:len(prompt)] = True
    return special_tokens.mark_fixed(row, fixed)

  def token_count(self) -> int:
    return int(sum(len(p) + len(r) + 1 for p, r in zip(self.prompts, self.responses)))

  def overflow(self, seq_len: int) -> tuple[int, int]:
    """(examples whose prompt is cut, examples whose response is cut) at windows of `seq_len`."""
    extra = 1 if self.bos else 0
    cut_prompt = sum(len(p) + extra > seq_len - 2 for p in self.prompts)
    cut_response = sum(min(len(p) + extra, seq_len - 2) + len(r) + 1 > seq_len
                       for p, r in zip(self.prompts, self.responses))
    return int(cut_prompt), int(cut_response)


def prompt_ids(messages: list[dict], template: str, tokenizer) -> np.ndarray:
  """The ids a window of `messages` + an assistant answer to come starts with (as `ChatExamples.window` frames them):
  what a chat sampler fixes before the answer (launch.sample --chat)."""
  prompt, _ = render(list(messages) + [{"role": "assistant", "content": ""}], template, tokenizer)
  ids = np.asarray(tokenizer.encode(prompt), np.int32)
  return np.concatenate([[tokenizer.special.bos], ids]).astype(np.int32) if template == "plain" else ids


def check(template: str, fill: str):
  if template not in TEMPLATES or fill not in FILLS:
    raise ConfigError(f"data.chat_template must be one of {TEMPLATES} and data.chat_fill one of {FILLS}, got "
                      f"{template!r} and {fill!r}.")


def encode(pairs, tokenizer, template: str = "plain", fill: str = "eos") -> ChatExamples:
  """ChatExamples of (prompt, response) text pairs (`render` of each conversation under `template`) with `fill`."""
  check(template, fill)
  encode_batch = getattr(tokenizer, "encode_batch", None)
  texts = [p for p, _ in pairs] + [r for _, r in pairs]
  ids = encode_batch(texts) if encode_batch else [tokenizer.encode(t) for t in texts]
  n = len(pairs)
  return ChatExamples(prompts=list(ids[:n]), responses=list(ids[n:]), fill=fill, bos=template == "plain")


def split(examples: ChatExamples, valid_fraction: float) -> tuple[ChatExamples, ChatExamples]:
  """(train, valid): the last `valid_fraction` of the examples held out (at least one of each)."""
  n = len(examples)
  if n < 2:
    raise corpus.DataError("data.layout='chat' needs at least two conversations (one to train on, one to validate).")
  cut = min(max(int(round(n * (1.0 - valid_fraction))), 1), n - 1)
  take = lambda rows: ChatExamples([examples.prompts[i] for i in rows], [examples.responses[i] for i in rows],
                                   examples.fill, examples.bos)
  return take(range(cut)), take(range(cut, n))
