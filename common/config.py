"""Pipeline configuration: the root of the YAML schema and its loading (the public entry: ``load_config``,
``PipelineConfig``, ``write_resolved``).

One section per stage plus the shared ones (``workdir``, ``seed``, ``data``, ``folds``, ``render``). Every field
carries a description and range checks; unknown keys are refused. The sections live where their area does:
:mod:`arena_kd.common.config_model` (render, model, LoRA, train, predict: the model engine) and
:mod:`arena_kd.common.config_stages` (data, folds, teachers, student, stacking, submission); import a section from
there. ``load_config(path, overrides)`` reads, layers (:func:`merge_layer`) and overrides (``--set``,
:func:`apply_overrides`) YAML files and returns a validated :class:`PipelineConfig`, or raises
:class:`arena_kd.common.errors.UserError` with one line naming the file, the key and the problem.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from arena_kd.common.config_model import RenderConfig, Section
from arena_kd.common.config_stages import (
    DataConfig,
    FoldsConfig,
    StackingConfig,
    StudentConfig,
    SubmissionConfig,
    TeachersConfig,
)
from arena_kd.common.errors import UserError

COLLECTIVE_TIMEOUT_S = 1800.0
"""Default of ``collective_timeout_s``: accelerate's own process-group default (``InitProcessGroupKwargs``)."""


class PipelineConfig(Section):
    workdir: str = Field(description="Folder for every artifact of this config (relative paths are relative to the "
                         "current directory).")
    seed: int = Field(42, ge=0, description="Global seed (folds, swaps, training).")
    data: DataConfig = Field(description="Input data.")
    folds: FoldsConfig = Field(default_factory=FoldsConfig, description="Cross-validation folds.")
    render: RenderConfig = Field(default_factory=RenderConfig, description="Pair rendering.")
    teachers: TeachersConfig = Field(default_factory=TeachersConfig, description="Teacher stage.")
    student: StudentConfig = Field(description="Student stage.")
    stacking: StackingConfig = Field(default_factory=StackingConfig, description="Stacker stage.")
    submission: SubmissionConfig = Field(default_factory=SubmissionConfig, description="Submission stage.")
    collective_timeout_s: float = Field(
        COLLECTIVE_TIMEOUT_S, gt=0, le=7 * 24 * 3600,
        description="Multi-process launches only: seconds one process waits in a collective (barrier, all-gather, "
        "gradient all-reduce) for the others before it stops with an error naming its rank and stage, instead of "
        "hanging. Must exceed the longest step rank 0 does alone while the others wait (export merge and check, "
        "cache builds); shorter finds a stuck launch sooner.")

    @field_validator("workdir")
    @classmethod
    def _non_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @model_validator(mode="after")
    def _one_temperature_owner(self) -> "PipelineConfig":
        """The soft-label temperature (teachers.combine) and the KD temperature (student.distill) would compound."""
        tc, td = self.teachers.combine.temperature, self.student.distill.temperature
        if tc != 1.0 and td != 1.0 and self.student.distill.alpha > 0:
            shown = tc if tc == "fit" else f"{tc:g}"
            raise ValueError(f"teachers.combine.temperature={shown} and student.distill.temperature={td:g} compound "
                             "(the student would learn teacher labels tempered twice); set one of them to 1")
        return self

    # convenience -----------------------------------------------------------------------
    @property
    def workdir_path(self) -> Path:
        return Path(self.workdir)

    def folds_path(self) -> Path:
        return Path(self.folds.file) if self.folds.file else self.workdir_path / "folds.csv"

    def soft_labels_path(self) -> Path:
        if self.student.distill.soft_labels:
            return Path(self.student.distill.soft_labels)
        return self.workdir_path / "teachers" / "soft_labels.parquet"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# --------------------------------------------------------------------------- loading


MAX_YAML_VALUES = 100_000
"""Most values (scalars, lists, mappings) a config may hold once its aliases are expanded. The shipped configs hold a
few hundred (configs/kaggle-gemma2.yaml: 267, counted by ``expanded_size``); the bound turns an alias bomb (a
billion-laughs document expanding to 10^9 values from a few lines) into one error line instead of unbounded memory."""


def expanded_size(node: yaml.Node, where: str) -> int:
    """Number of values of a composed YAML document with every alias expanded, computed without expanding it (each
    shared node once); UserError for a recursive alias (``x: &a [*a]``), which no config can mean."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(n: yaml.Node) -> int:
        key = id(n)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            raise UserError(f"{where}: line {n.start_mark.line + 1}: recursive YAML alias (a value that contains "
                            "itself)")
        open_nodes.add(key)
        if isinstance(n, yaml.SequenceNode):
            total = 1 + sum(size(c) for c in n.value)
        elif isinstance(n, yaml.MappingNode):
            total = 1 + sum(size(k) + size(v) for k, v in n.value)
        else:
            total = 1
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(node)


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader with YAML 1.2 booleans: only true / false (any case) are booleans. Under YAML 1.1 ``off``, ``no``,
    ``on`` and ``yes`` are too, so ``prior_match: off`` (or ``--set student.distill.prior_match=off``) reached the
    config as False and was refused as not one of 'off', 'all_rows', 'per_source'."""


ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
ConfigLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))


def load_yaml_text(text: str, where: str) -> Any:
    """``yaml.safe_load`` bounded in time and memory: a document whose aliases expand to more than
    MAX_YAML_VALUES values, a recursive alias, or nesting too deep to parse is one UserError line naming ``where``.
    yaml.YAMLError (a syntax error) propagates for the caller to word."""
    loader = ConfigLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        n = expanded_size(node, where)
        if n > MAX_YAML_VALUES:
            raise UserError(f"{where}: YAML aliases expand to {n:,} values (limit {MAX_YAML_VALUES:,}); "
                            "an alias bomb? write the values out or use fewer aliases")
        return loader.construct_document(node)
    except RecursionError:
        raise UserError(f"{where}: YAML nested too deeply to read") from None
    finally:
        loader.dispose()


def _parse_value(raw: str, source: str = "--set") -> Any:
    """`--set` values are parsed as YAML scalars/lists (so 1e-5, true, [a,b], null work), aliases bounded."""
    try:
        return load_yaml_text(raw, source)
    except yaml.YAMLError:
        return raw


def apply_overrides(d: dict[str, Any], overrides: list[str], source: str = "--set") -> dict[str, Any]:
    """Apply ``dotted.key=value`` overrides; list items are addressed by index (teachers.models.0.weight=2)."""
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"{source}: '{item}' is not of the form dotted.key=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = d
        for i, p in enumerate(parts[:-1]):
            if isinstance(node, list):
                try:
                    node = node[int(p)]
                except (ValueError, IndexError):
                    raise UserError(f"{source}: {key}: no list item '{p}'") from None
                continue
            if not isinstance(node, dict):
                raise UserError(f"{source}: {key}: '{'.'.join(parts[:i])}' is not a section")
            node = node.setdefault(p, {})
        last = parts[-1]
        value = _parse_value(raw, f"{source} {key}")
        if isinstance(node, list):
            try:
                node[int(last)] = value
            except (ValueError, IndexError):
                raise UserError(f"{source}: {key}: no list item '{last}'") from None
        else:
            node[last] = value
    return d


def unalias(node: Any) -> Any:
    """A copy of a loaded YAML tree in which no two places share an object.

    YAML anchors/aliases (``model: *tiny_gemma2``) load as one shared dict, so editing one place would edit
    every alias (``--set student.train.epochs=7`` would retrain the teachers too). ``copy.deepcopy`` keeps the
    sharing (its memo), hence this plain recursive copy.
    """
    if isinstance(node, dict):
        return {k: unalias(v) for k, v in node.items()}
    if isinstance(node, list):
        return [unalias(v) for v in node]
    return node


def _format_error(path: str, err: ValidationError, overrides: list[str] | None = None) -> str:
    e = err.errors()[0]
    loc = ".".join(str(x) for x in e["loc"]) or "<root>"
    msg = e["msg"]
    if e["type"] == "extra_forbidden":
        msg = "unknown key"
    elif e["type"] == "missing":
        msg = "required key is missing"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    # name the --set that put the bad value there (the last one wins, as when applying them)
    for item in reversed(overrides or []):
        key = item.split("=", 1)[0].strip()
        if loc == key or loc.startswith(key + "."):
            return f"{path}: {loc}: {msg}{more} (from --set {item})"
    return f"{path}: {loc}: {msg}{more}"


def _read_yaml(p: Path) -> dict[str, Any]:
    if not p.is_file():
        raise UserError(f"{p}: config file not found")
    data = p.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{p}: line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the config as "
                        "UTF-8") from None
    try:
        raw = load_yaml_text(text, str(p)) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{p}:{where} invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(raw, dict):
        raise UserError(f"{p}: top level must be a mapping of sections")
    return raw


def merge_layer(base: Any, layer: Any, where: str = "") -> Any:
    """``layer`` laid over ``base``: mappings merge key by key, a list of mappings merges item by item (same index;
    extra items are appended), anything else (scalars, lists of scalars, null) replaces the base value."""
    if isinstance(base, dict) and isinstance(layer, dict):
        out = dict(base)
        for k, v in layer.items():
            out[k] = merge_layer(base[k], v, f"{where}.{k}" if where else str(k)) if k in base else v
        return out
    if isinstance(base, list) and isinstance(layer, list) and layer and all(isinstance(x, dict) for x in layer):
        out = list(base)
        for i, v in enumerate(layer):
            out[i:i + 1] = [merge_layer(base[i], v, f"{where}.{i}")] if i < len(base) else [v]
        return out
    return layer


def load_config(path: str | Path | list[str | Path], overrides: list[str] | None = None) -> PipelineConfig:
    """Read, layer, override and validate YAML config(s); one-line UserError on any problem.

    ``path`` may be a list: the first file is the base, each later file is laid over it with :func:`merge_layer`
    (e.g. ``configs/kaggle-gemma2.yaml`` + ``configs/rehearsal.yaml``), then the ``--set`` overrides apply.
    """
    paths = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    if not paths:
        raise UserError("no config file given")
    raw: dict[str, Any] = {}
    for p in paths:
        raw = merge_layer(raw, _read_yaml(p)) if raw else _read_yaml(p)
    raw = apply_overrides(unalias(raw), overrides or [])
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_error(" + ".join(str(p) for p in paths), err, overrides)) from None


def write_resolved(cfg: PipelineConfig, out_dir: str | Path, name: str = "config.resolved.yaml") -> Path:
    """Write the resolved config next to a stage's outputs (atomically)."""
    from arena_kd.common.io import atomic_write_text

    path = Path(out_dir) / name
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return path
