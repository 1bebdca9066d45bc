"""How a model pair is named from its models (`model_pair=hf`: `name: ${specexp_pair_name:}`):
`<target>__<drafter>`, each the last component of the model's hub id or path (its GGUF file's
when it has one) without .gguf; `<target>` alone with no drafter. Torch-free, so the run (which
registers the resolver through specexp.experiment.config) and the report (which labels a failed
run from its recorded, unresolved config) name a pair by the same rule."""
from __future__ import annotations

from omegaconf import OmegaConf

TARGET_MISSING = ("model_pair.target.name is missing: give the target model, e.g. `specexp model_pair=hf "
                  "model_pair.target.name=ORG/MODEL` (a hub id, a local folder or a .gguf file)")


def short_model_name(name: str | None, gguf_file: str | None = None) -> str | None:
    """A model's label: the last component of its hub id or path (the GGUF file's when there is
    one), without a .gguf suffix: `huggyllama/llama-7b` -> `llama-7b`, `/m/q4/tiny.Q4_0.gguf` -> `tiny.Q4_0`."""
    if name is None:
        return None
    last = str(gguf_file or name).replace("\\", "/").rstrip("/").rsplit("/", 1)[-1]
    return last[: -len(".gguf")] if last.lower().endswith(".gguf") else last


def pair_name(*, _parent_) -> str:
    """`${specexp_pair_name:}` in a model_pair node: `<target>__<drafter>` from its models' names
    (short_model_name), `<target>` alone when it has no drafter: the label reports group runs by."""
    if OmegaConf.is_missing(_parent_.target, "name"):
        raise ValueError(TARGET_MISSING)
    names = []
    for role in ("target", "drafter"):
        node = _parent_.get(role)
        if node is not None and not OmegaConf.is_missing(node, "name") and node.get("name") is not None:
            names.append(short_model_name(node.name, node.get("gguf_file")))
    return "__".join(names)


def register_resolver() -> None:
    """`${specexp_pair_name:}`, registered once per process (every compose and every reader)."""
    if not OmegaConf.has_resolver("specexp_pair_name"):
        OmegaConf.register_new_resolver("specexp_pair_name", pair_name)


register_resolver()
