"""W&B sweep files, read and expanded locally: the same YAML that `wandb sweep FILE` accepts.

Pure functions, no process or file I/O beyond reading the file: `load_sweep` checks a file and
returns a `SweepSpec`; `sweep_points` lists its points (grid: every combination in file order;
random: `count` draws from a generator seeded by the file, so the same file always gives the same
points and a restarted sweep recognises them); `command_argv` builds one point's command line the
way a W&B agent does (`${program}`, `${args}`, ...).

Supported (W&B's names): methods grid and random (bayes needs the W&B server: `--agent`);
parameters with `value`, `values` (+ `probabilities` for random), or `distribution` with
min/max (constant, categorical, int_uniform, uniform, q_uniform, log_uniform_values,
q_log_uniform_values, log_uniform, normal, q_normal, log_normal); `command` macros ${env},
${interpreter}, ${program}, ${args}, ${args_no_hyphens}, ${args_no_boolean_flags}, ${args_json}.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import yaml

from persona.errors import UserError

METHODS = ("grid", "random")
SERVER_METHODS = ("bayes",)  # need the W&B sweep server: run them with --agent
# keys `wandb sweep` accepts at the top level of a sweep file
TOP_LEVEL_KEYS = ("program", "method", "parameters", "command", "metric", "name", "description",
                  "project", "entity", "early_terminate", "run_cap", "job")
# W&B's default command when a file has none
DEFAULT_COMMAND = ("${env}", "${interpreter}", "${program}", "${args}")
# distribution -> the keys it needs besides "distribution"
DISTRIBUTIONS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "categorical": ("values",),
    "int_uniform": ("min", "max"),
    "uniform": ("min", "max"),
    "q_uniform": ("min", "max"),
    "log_uniform_values": ("min", "max"),
    "q_log_uniform_values": ("min", "max"),
    "log_uniform": ("min", "max"),  # min/max are natural logs of the bounds
    "normal": (),
    "q_normal": (),
    "log_normal": (),
}
DEFAULT_Q = 1.0  # W&B's default quantisation step of the q_* distributions
DEFAULT_MU, DEFAULT_SIGMA = 0.0, 1.0  # W&B's defaults of the normal distributions
SEED_KEY = "seed_everything"  # the LightningCLI key of the run's seed (tags and names show it)
NAME_VALUE_CHARS = 24  # longest value text kept in a run name
NAME_SAFE = re.compile(r"[^A-Za-z0-9._=+-]+")  # characters replaced in run names


@dataclass(frozen=True)
class Parameter:
    """One swept parameter: fixed values (grid and random) or a distribution (random only)."""

    name: str
    values: tuple[Any, ...] = ()  # `value` is a 1-tuple; empty for a distribution
    probabilities: tuple[float, ...] | None = None
    distribution: str | None = None
    settings: Mapping[str, Any] = field(default_factory=dict)  # min, max, q, mu, sigma

    @property
    def varies(self) -> bool:
        return self.distribution is not None or len(self.values) > 1


@dataclass(frozen=True)
class SweepSpec:
    """A checked sweep file."""

    path: Path
    name: str
    method: str
    parameters: tuple[Parameter, ...]
    command: tuple[str, ...]
    program: str | None
    run_cap: int | None
    digest: str  # sha256 of the file's canonical content: seeds random draws

    @property
    def varying(self) -> tuple[str, ...]:
        """Names of the parameters that differ between points (they name the runs)."""
        return tuple(p.name for p in self.parameters if p.varies)


def _fail(path: Path, where: str, message: str) -> UserError:
    return UserError(f"{path}: {where}: {message}")


def _parameter(path: Path, name: str, entry: Any, method: str) -> Parameter:
    where = f"parameters.{name}"
    if not isinstance(entry, Mapping):
        raise _fail(path, where, "expected a mapping with `value`, `values` or `distribution`")
    if "parameters" in entry:
        raise _fail(path, where, "nested parameters are not supported locally; use dotted "
                                 "names (model.deformer.mode) or --agent")
    kinds = [k for k in ("value", "values", "distribution") if k in entry]
    if "distribution" in entry and entry["distribution"] in ("constant", "categorical"):
        kinds = ["distribution"]
    if not kinds or (len(kinds) > 1 and "distribution" not in kinds):
        raise _fail(path, where, "needs exactly one of `value`, `values`, `distribution`")
    if "distribution" in entry:
        distribution = entry["distribution"]
        if distribution not in DISTRIBUTIONS:
            raise _fail(path, where, f"distribution {distribution!r} is not one of "
                                     f"{', '.join(DISTRIBUTIONS)}")
        missing = [k for k in DISTRIBUTIONS[distribution] if k not in entry]
        if missing:
            raise _fail(path, where, f"distribution {distribution} needs {', '.join(missing)}")
        if distribution == "constant":
            return Parameter(name, (entry["value"],))
        if distribution == "categorical":
            return _values_parameter(path, name, entry, method)
        if method == "grid":
            raise _fail(path, where, f"a grid needs `values`, not distribution {distribution}")
        settings = {k: entry[k] for k in ("min", "max", "q", "mu", "sigma") if k in entry}
        for key, value in settings.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise _fail(path, f"{where}.{key}", f"expected a number, got {value!r}")
        if "min" in settings and settings["min"] > settings["max"]:
            raise _fail(path, where, f"min {settings['min']} > max {settings['max']}")
        if distribution.endswith("log_uniform_values") and settings["min"] <= 0:
            raise _fail(path, f"{where}.min", "log_uniform_values needs min > 0")
        return Parameter(name, distribution=distribution, settings=settings)
    if "value" in entry:
        return Parameter(name, (entry["value"],))
    return _values_parameter(path, name, entry, method)


def _values_parameter(path: Path, name: str, entry: Mapping, method: str) -> Parameter:
    where = f"parameters.{name}.values"
    values = entry.get("values")
    if not isinstance(values, list) or not values:
        raise _fail(path, where, f"expected a non-empty list, got {values!r}")
    probabilities = entry.get("probabilities")
    if probabilities is not None:
        if (not isinstance(probabilities, list) or len(probabilities) != len(values)
                or any(not isinstance(p, int | float) or p < 0 for p in probabilities)
                or not math.isclose(sum(probabilities), 1.0, abs_tol=1e-6)):
            raise _fail(path, f"parameters.{name}.probabilities",
                        f"expected {len(values)} non-negative numbers summing to 1")
        probabilities = tuple(float(p) for p in probabilities)
    return Parameter(name, tuple(values), probabilities)


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and check a W&B sweep file; UserError naming the file and field otherwise."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"sweep file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from error
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a W&B sweep mapping (method, parameters, command)")
    unknown = sorted(set(data) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise _fail(path, unknown[0], f"not a W&B sweep key ({', '.join(TOP_LEVEL_KEYS)})")
    method = data.get("method")
    if method in SERVER_METHODS:
        raise _fail(path, "method", f"{method} search needs the W&B sweep server: "
                                    "run `persona sweep FILE --agent`")
    if method not in METHODS:
        raise _fail(path, "method", f"expected one of {', '.join(METHODS)}, got {method!r}")
    entries = data.get("parameters")
    if not isinstance(entries, dict) or not entries:
        raise _fail(path, "parameters", "expected a mapping of at least one parameter")
    parameters = tuple(_parameter(path, str(name), entry, method)
                       for name, entry in entries.items())
    command = data.get("command", list(DEFAULT_COMMAND))
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise _fail(path, "command", "expected a list of strings")
    run_cap = data.get("run_cap")
    if run_cap is not None and (isinstance(run_cap, bool) or not isinstance(run_cap, int)
                                or run_cap < 1):
        raise _fail(path, "run_cap", f"expected a positive integer, got {run_cap!r}")
    digest = hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
    return SweepSpec(path=path, name=str(data.get("name") or path.stem), method=method,
                     parameters=parameters, command=tuple(command),
                     program=data.get("program"), run_cap=run_cap, digest=digest)


# ---------------------------------------------------------------------------- points


def grid_points(parameters: Sequence[Parameter]) -> list[dict[str, Any]]:
    """Every combination, the first parameter varying slowest (file order)."""
    names = [p.name for p in parameters]
    return [dict(zip(names, combo, strict=True))
            for combo in product(*(p.values for p in parameters))]


def draw(parameter: Parameter, rng: np.random.Generator) -> Any:
    """One value of a parameter for a random search (W&B's distributions)."""
    if parameter.distribution is None:
        index = rng.choice(len(parameter.values), p=parameter.probabilities)
        return parameter.values[int(index)]
    s = parameter.settings
    q = float(s.get("q", DEFAULT_Q))
    mu, sigma = float(s.get("mu", DEFAULT_MU)), float(s.get("sigma", DEFAULT_SIGMA))
    kind = parameter.distribution
    if kind == "int_uniform":
        return int(rng.integers(int(s["min"]), int(s["max"]) + 1))
    if kind == "uniform":
        return float(rng.uniform(s["min"], s["max"]))
    if kind == "q_uniform":
        return float(np.round(rng.uniform(s["min"], s["max"]) / q) * q)
    if kind == "log_uniform_values":
        return float(math.exp(rng.uniform(math.log(s["min"]), math.log(s["max"]))))
    if kind == "q_log_uniform_values":
        value = math.exp(rng.uniform(math.log(s["min"]), math.log(s["max"])))
        return float(np.round(value / q) * q)
    if kind == "log_uniform":
        return float(math.exp(rng.uniform(s["min"], s["max"])))
    if kind == "normal":
        return float(rng.normal(mu, sigma))
    if kind == "q_normal":
        return float(np.round(rng.normal(mu, sigma) / q) * q)
    if kind == "log_normal":
        return float(math.exp(rng.normal(mu, sigma)))
    raise ValueError(f"unknown distribution {kind!r}")  # load_sweep checked it


def random_points(parameters: Sequence[Parameter], count: int, digest: str
                  ) -> list[dict[str, Any]]:
    """`count` draws, reproducible from the sweep file's digest (point i is always the same)."""
    rng = np.random.default_rng(int(digest[:16], 16))
    return [{p.name: draw(p, rng) for p in parameters} for _ in range(count)]


def sweep_points(spec: SweepSpec, count: int | None = None) -> list[dict[str, Any]]:
    """The sweep's points: a grid's all (the first `count` with count), a random search's
    `count` (else run_cap) draws."""
    if spec.method == "grid":
        points = grid_points(spec.parameters)
        return points[:count] if count is not None else points
    total = count if count is not None else spec.run_cap
    if total is None:
        raise UserError(f"{spec.path}: method random needs `run_cap` in the file or --count")
    return random_points(spec.parameters, total, spec.digest)


# ---------------------------------------------------------------------------- names and commands


def value_text(value: Any) -> str:
    """A value as a command-line argument: YAML-compatible (bools lower case, floats short)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


PATH_SUFFIX = re.compile(r"\.(ya?ml|json|npz)$")  # values named by their file stem in run names


def run_name(point: Mapping[str, Any], varying: Sequence[str]) -> str:
    """A run's name from the values that differ between points: `mode=off_seed=1`
    (the last part of each dotted key; the seed key as "seed"; a path as its file stem)."""
    parts = []
    for key in varying:
        label = "seed" if key == SEED_KEY else key.split(".")[-1]
        text = value_text(point[key])
        if isinstance(point[key], str) and ("/" in text or PATH_SUFFIX.search(text)):
            text = PurePosixPath(text).stem  # a config fragment's path: its file name says it
        if isinstance(point[key], float):
            text = f"{point[key]:.4g}"
        parts.append(f"{label}={text[:NAME_VALUE_CHARS]}")
    return NAME_SAFE.sub("-", "_".join(parts)) or "point"


def unique_names(names: Sequence[str]) -> list[str]:
    """Names made unique by a numeric suffix where two points share one."""
    seen: dict[str, int] = {}
    unique = []
    for name in names:
        count = seen.get(name, 0)
        seen[name] = count + 1
        unique.append(name if count == 0 else f"{name}-{count}")
    return unique


def point_args(point: Mapping[str, Any]) -> dict[str, list[str]]:
    """The forms a W&B agent substitutes for ${args...}."""
    args = [f"--{k}={value_text(v)}" for k, v in point.items()]
    return {
        "${args}": args,
        "${args_no_hyphens}": [f"{k}={value_text(v)}" for k, v in point.items()],
        "${args_no_boolean_flags}": [
            f"--{k}" if v is True else f"--{k}={value_text(v)}"
            for k, v in point.items() if v is not False],
        "${args_json}": [json.dumps(dict(point))],
    }


def command_argv(spec: SweepSpec, point: Mapping[str, Any], extra: Sequence[str] = ()
                 ) -> list[str]:
    """One point's command line, as a W&B agent builds it; `extra` arguments are appended after
    the point's (LightningCLI: the last value wins, so they cannot be overridden by accident).
    `persona` as the program runs through this interpreter (`python -m persona`)."""
    expansions = point_args(point)
    argv: list[str] = []
    for item in spec.command:
        if item == "${env}":
            continue  # `/usr/bin/env` in W&B: the environment is inherited here anyway
        if item == "${interpreter}":
            argv.append(sys.executable)
        elif item == "${program}":
            if spec.program is None:
                raise UserError(f"{spec.path}: command uses ${{program}} but the file has no "
                                "`program`")
            argv.append(spec.program)
        elif item in expansions:
            argv += expansions[item] + list(extra)
            extra = ()
        else:
            argv.append(item)
    argv += list(extra)
    if argv and argv[0] == "persona":
        argv = [sys.executable, "-m", "persona", *argv[1:]]
    return argv
