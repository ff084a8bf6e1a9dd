"""Typed plans of the experiments: compared runs, bag files, tables and claims, validated when they are loaded.

The config keeps them as the YAML a user writes (`compare.runs`, `repro.*`); `compare_runs` and
`ReproPlan.load` turn that into these dataclasses, or refuse it in one line naming the entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bingo.config import CompareConfig, ReproConfig, preset_names
from bingo.errors import UserError
from bingo.methods import METHODS
from bingo.zoo import resolve_checkpoint


@dataclass(frozen=True)
class RunSpec:
    """One run of a comparison: a method with its own `--set` overrides, and (repro) the bag file it trains on."""

    name: str
    method: str
    overrides: tuple[str, ...] = ()
    bags: str | None = None  # a name in repro.bags


@dataclass(frozen=True)
class BagSpec:
    """One bag file of repro: `bingo bags` overrides, and the run whose first-seed student's features make it."""

    name: str
    overrides: tuple[str, ...] = ()
    model: str | None = None  # a name in repro.runs; None: the teacher's features


@dataclass(frozen=True)
class TableSpec:
    """One table of repro: its runs, the protocols they are evaluated by (None: compare.protocols), its text."""

    name: str
    runs: tuple[str, ...]
    title: str = ""
    protocols: tuple[str, ...] | None = None
    note: str = ""
    investigation: bool = False  # run only when --tables names it
    teachers: tuple[str, ...] = ()  # names in repro.teachers: each run that uses a teacher, once under each (RUN@NAME)


@dataclass(frozen=True)
class TeacherSpec:
    """A teacher of repro besides its own: a checkpoint, or a preset's MoCo-v2 recipe with overrides that bingo
    pretrains; neither: the repro teacher itself."""

    name: str
    checkpoint: str | None = None  # a file or zoo:NAME
    preset: str | None = None  # the recipe to pretrain (its pretrain, data and teacher sections)
    overrides: tuple[str, ...] = ()  # on that recipe, e.g. pretrain.optim.epochs=2

    @property
    def is_repro_teacher(self) -> bool:
        """Whether this is the teacher every other table uses (its runs are shared with them)."""
        return self.checkpoint is None and self.preset is None and not self.overrides


@dataclass(frozen=True)
class ClaimSpec:
    """A claim of the paper: run `better` beats run `worse` (or the teacher) in `table`, on `metric` or on each
    of repro.metrics."""

    claim: str
    table: str
    better: str
    worse: str
    metric: str | None = None
    paper: str | None = None  # what the paper reports, shown beside the verdict
    margin: float | None = None  # "at least as good as": better - worse > -margin (accuracy points)


def _entry(where: str, spec: Any, keys: set[str]) -> dict:
    """A plan entry as a mapping with known keys only."""
    spec = {} if spec is None else spec
    if not isinstance(spec, dict):
        raise UserError(f"{where} must be a mapping with keys {', '.join(sorted(keys))}, not {spec!r}")
    extra = set(spec) - keys
    if extra:
        raise UserError(f"{where} has unknown keys {sorted(extra)}; use {', '.join(sorted(keys))}")
    return spec


def _strings(where: str, value: Any) -> tuple[str, ...]:
    """A list of strings (overrides, run names, protocols) as a tuple."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise UserError(f"{where} must be a list of strings, not {value!r}")
    return tuple(value)


def run_spec(where: str, name: str, spec: Any, keys: set[str]) -> RunSpec:
    """A compared run from its YAML entry (keys: method, set, and for repro bags)."""
    spec = _entry(where, spec, keys)
    method = spec.get("method", name)
    if method not in METHODS:
        raise UserError(f"{where}: unknown method '{method}'; choose one of: {', '.join(METHODS)}")
    return RunSpec(name, method, _strings(f"{where}.set", spec.get("set", [])), spec.get("bags"))


def compare_runs(compare: CompareConfig) -> dict[str, RunSpec]:
    """The runs of `bingo compare` (compare.runs)."""
    if not compare.runs:
        raise UserError("nothing to compare: pass --methods NAME ... or compare.runs in a --config file")
    return {name: run_spec(f"compare.runs.{name}", name, spec, {"method", "set"})
            for name, spec in compare.runs.items()}


@dataclass(frozen=True)
class ReproPlan:
    """`bingo repro`'s plan: bag files, a pool of runs shared by the tables, the tables and the claims."""

    bags: dict[str, BagSpec]
    runs: dict[str, RunSpec]
    tables: dict[str, TableSpec]
    claims: tuple[ClaimSpec, ...]
    metrics: tuple[str, ...]  # claims without their own metric are judged on each of these
    teacher_protocols: tuple[str, ...]  # the teacher's reference row
    teachers: dict[str, TeacherSpec] = field(default_factory=dict)
    intro: str = ""  # Markdown at the top of the report, before the verdicts

    @classmethod
    def load(cls, repro: ReproConfig) -> ReproPlan:
        """The plan of the repro section, every name it uses checked (before any work)."""
        if not repro.tables:
            raise UserError("nothing to reproduce: repro.tables is empty (the repro preset defines the paper's tables)")
        bags = {name: _bag(name, spec) for name, spec in repro.bags.items()}
        runs = {name: run_spec(f"repro.runs.{name}", name, spec, {"method", "set", "bags"})
                for name, spec in repro.runs.items()}
        tables = {name: _table(name, spec) for name, spec in repro.tables.items()}
        plan = cls(bags, runs, tables, tuple(_claim(claim) for claim in repro.claims),
                   _strings("repro.metrics", repro.metrics), _strings("repro.teacher_protocols",
                                                                      repro.teacher_protocols),
                   {name: _teacher(name, spec) for name, spec in repro.teachers.items()}, str(repro.intro or ""))
        plan.check_names()
        return plan

    def check_names(self) -> None:
        """Every bag file, run and table a plan entry names exists; every claim compares two runs of its table."""
        for bag in self.bags.values():
            if bag.model and bag.model not in self.runs:
                raise UserError(f"repro.bags.{bag.name}: model '{bag.model}' is not a run in repro.runs")
        for run in self.runs.values():
            if run.bags and run.bags not in self.bags:
                raise UserError(f"repro.runs.{run.name}: bags '{run.bags}' is not in repro.bags")
        for table in self.tables.values():
            missing = [run for run in table.runs if run not in self.runs]
            if missing or not table.runs:
                raise UserError(f"repro.tables.{table.name}: " + (f"run '{missing[0]}' is not in repro.runs"
                                                                  if missing else "no runs"))
            unknown = [name for name in table.teachers if name not in self.teachers]
            if unknown:
                raise UserError(f"repro.tables.{table.name}: teacher '{unknown[0]}' is not in repro.teachers")
        for claim in self.claims:
            table = self.tables.get(claim.table)
            shown = [*self.shown_runs(table), "teacher"] if table else []
            if not table or any(side not in shown for side in (claim.better, claim.worse)):
                raise UserError(f"repro.claims: '{claim.claim}' must name a table and two of its runs"
                                + (" (RUN@TEACHER under one of its teachers)" if table and table.teachers else ""))

    @staticmethod
    def shown_runs(table: TableSpec) -> list[str]:
        """The row names a table may show: its runs, and with teachers each run under each of them (RUN@TEACHER)."""
        return [*table.runs, *(f"{run}@{teacher}" for run in table.runs for teacher in table.teachers)]

    def chosen_tables(self, names: list[str] | None) -> list[str]:
        """The tables to run, in the plan's order: `names`, or every table not marked as an investigation."""
        unknown = [t for t in names or [] if t not in self.tables]
        if unknown:
            raise UserError(f"unknown table '{unknown[0]}'; choose from: {', '.join(self.tables)}")
        chosen = names or [name for name, table in self.tables.items() if not table.investigation]
        return [t for t in self.tables if t in chosen]


def _bag(name: str, spec: Any) -> BagSpec:
    spec = _entry(f"repro.bags.{name}", spec, {"set", "model"})
    return BagSpec(name, _strings(f"repro.bags.{name}.set", spec.get("set", [])), spec.get("model"))


def _table(name: str, spec: Any) -> TableSpec:
    spec = _entry(f"repro.tables.{name}", spec, {"title", "runs", "protocols", "note", "investigation", "teachers"})
    if not isinstance(spec.get("investigation", False), bool):
        raise UserError(f"repro.tables.{name}.investigation must be true or false, not {spec['investigation']!r}")
    protocols = spec.get("protocols")
    return TableSpec(name, _strings(f"repro.tables.{name}.runs", spec.get("runs", [])), str(spec.get("title", "")),
                     None if protocols is None else _strings(f"repro.tables.{name}.protocols", protocols),
                     str(spec.get("note", "")), spec.get("investigation", False),
                     _strings(f"repro.tables.{name}.teachers", spec.get("teachers", [])))


def _teacher(name: str, spec: Any) -> TeacherSpec:
    where = f"repro.teachers.{name}"
    spec = _entry(where, spec, {"checkpoint", "preset", "set"})
    for key in ("checkpoint", "preset"):
        if key in spec and (not isinstance(spec[key], str) or not spec[key]):
            raise UserError(f"{where}.{key} must be a non-empty string, not {spec[key]!r}")
    if "checkpoint" in spec and set(spec) - {"checkpoint"}:
        raise UserError(f"{where}: a checkpoint is used as it is; drop preset and set, or drop checkpoint to "
                        "pretrain this teacher")
    if "checkpoint" in spec:
        try:
            path = Path(resolve_checkpoint(spec["checkpoint"]))
        except UserError as err:  # a zoo name that is not shipped, or a damaged zoo file
            raise UserError(f"{where}: {err}") from None
        if not path.is_file():
            raise UserError(f"{where}: checkpoint {spec['checkpoint']} does not exist; give an encoder file or "
                            "zoo:NAME (bingo zoo list)")
    if "@" in name:
        raise UserError(f"{where}: a teacher's name cannot hold '@' (rows are named RUN@TEACHER)")
    if spec.get("preset", "demo") not in preset_names():
        raise UserError(f"{where}: unknown preset '{spec['preset']}'; choose one of: {', '.join(preset_names())}")
    return TeacherSpec(name, spec.get("checkpoint"), spec.get("preset"), _strings(f"{where}.set", spec.get("set", [])))


def _claim(spec: Any) -> ClaimSpec:
    keys = {"claim", "table", "better", "worse", "metric", "paper", "margin"}
    if not isinstance(spec, dict) or set(spec) - keys or not {"claim", "table", "better", "worse"} <= set(spec):
        name = spec.get("claim") if isinstance(spec, dict) else spec
        raise UserError(f"repro.claims: '{name}' must name a table and two of its runs "
                        f"(keys: {', '.join(sorted(keys))})")
    margin = spec.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, int | float) or margin <= 0):
        raise UserError(f"repro.claims: '{spec['claim']}' has margin {margin!r}; a non-inferiority margin is a "
                        "positive number of accuracy points")
    return ClaimSpec(**spec)
