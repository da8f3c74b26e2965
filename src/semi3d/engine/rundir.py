"""The layout of one run folder, in one place.

A run folder (``runs/<name>/`` by default; ``RunConfig.run_dir``) holds::

    config.yaml            the resolved config the run trained with
    splits.json            labelled / unlabelled / validation / test case ids (and domains)
    checkpoints/last.pt    the resumable training state (nets, optimiser, RNGs, method state)
    checkpoints/model_best.pt, model_final.pt   the models `predict` loads (`model(which)`)
    log.jsonl, log.csv, progress.png, tensorboard/   training logs
    train_summary.json     what `fit()` returned
    resume_changes.jsonl   config keys a resume changed, one line per resume
    eval_<split>/          `semi3d evaluate` output (predictions, metrics.json)
    pseudo/, report/, suggest/, embedding_cache/   artefacts of methods and apps

Every module that reads or writes a run folder goes through :class:`RunDir`.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..errors import InputError

__all__ = ["RunDir"]


class _At:
    """A fixed path of a run folder: ``<run>/<name>``, or ``<run>/<under>/<name>``."""

    def __init__(self, name: str, under: str | None = None):
        self.name, self.under = name, under

    def __get__(self, run: "RunDir | None", owner: type) -> Path:
        if run is None:
            return self  # type: ignore[return-value]
        return (run.path if self.under is None else getattr(run, self.under)) / self.name


class RunDir:
    """Paths and readers of one run folder; ``RunDir(path)`` touches nothing on disk (``prepare`` does)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __fspath__(self) -> str:
        return str(self.path)

    def __truediv__(self, name: str) -> Path:  # an artefact folder or file of a method / app
        return self.path / name

    # ------------------------------------------------------------------ paths
    config = _At("config.yaml")
    splits = _At("splits.json")
    checkpoints = _At("checkpoints")
    last = _At("last.pt", under="checkpoints")
    summary = _At("train_summary.json")
    log = _At("log.jsonl")
    log_csv = _At("log.csv")
    progress = _At("progress.png")
    tensorboard = _At("tensorboard")

    def model(self, which: str) -> Path:
        """``checkpoints/model_<which>.pt`` (``which``: best or final)."""
        return self.checkpoints / f"model_{which}.pt"

    def eval_dir(self, split: str) -> Path:
        return self.path / f"eval_{split}"

    # ------------------------------------------------------------------ training
    def prepare(self, resume: bool) -> None:
        """Create the folder for a new training run, or check it holds a checkpoint to resume;
        a finished or started run is never overwritten silently."""
        if resume and not self.last.is_file():
            raise InputError(self.last, "nothing to resume: no checkpoint in this run folder")
        if not resume and self.last.is_file():
            raise InputError(self.path, "run folder already holds a checkpoint; pass --resume or choose another name")
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write_test"
            probe.write_text("")
            probe.unlink()
        except OSError as e:
            raise InputError(self.path, f"cannot write the run folder: {e.strerror}") from None

    # ------------------------------------------------------------------ readers
    def require(self) -> RunDir:
        """Self, after checking the folder exists and holds ``config.yaml``."""
        if not self.path.is_dir():
            raise InputError(self.path, "no such run folder")
        if not self.config.is_file():
            raise InputError(self.path, "not a semi3d run folder (no config.yaml)")
        return self

    def load_config(self, overrides: Sequence[str] = ()):
        """The run's resolved config with ``key=value`` overrides."""
        from ..config import load_config

        return load_config(self.config, list(overrides))

    def data_reader(self, cfg, **options):
        """The reader of the run's dataset (``cfg.data``, its ``options`` updated by ``options``).
        A relative ``data.root`` is read from the current folder, as in training: when it is not
        there, one error that says so and how to point at it (``--data-root``)."""
        from ..data.formats import build_reader

        root = Path(cfg.data.root)
        if not root.is_absolute() and not root.exists():
            raise InputError(root, f"no such folder: the run's data.root is relative to the folder it was trained "
                                   f"from, not to the current one ({Path.cwd()}); run from there or give "
                                   "--data-root DIR")
        return build_reader(cfg.data.format, root, **{**cfg.data.options, **options})

    def load_splits(self) -> dict[str, list[str]]:
        from ..data.splits import load_splits

        if not self.splits.is_file():
            raise InputError(self.splits, "missing: the run folder has no splits.json")
        return load_splits(self.splits)

    def selected_model(self, which: str = "auto") -> Path:
        """The model file the run's selection policy designates: ``model_best.pt`` for
        ``best_validation``, else ``model_final.pt``; ``which`` = best / final / a file path overrides."""
        if which not in ("auto", "best", "final"):
            if not Path(which).is_file():
                raise InputError(which, "--which takes auto, best, final or the path of a model file "
                                        "(checkpoints/model_*.pt)")
            return Path(which)
        if which == "auto":
            try:
                import yaml

                sel = yaml.safe_load(self.config.read_text())["train"]["selection"]
            except (OSError, KeyError, TypeError):
                raise InputError(self.path, "not a semi3d run folder (no readable config.yaml)") from None
            which = "best" if sel == "best_validation" else "final"
        return self.model(which)

    def saved_model(self, order: Sequence[str] = ("best", "final")) -> Path | None:
        """The first of ``model_<which>.pt`` in ``order`` that exists, else None."""
        return next((p for p in map(self.model, order) if p.is_file()), None)

    def metrics(self, eval_dir: Path | str | None = None) -> Path | None:
        """The evaluation ``metrics.json`` to show, or None when there is none.

        ``eval_dir`` (a folder, absolute or relative to the run, or a name such as ``eval_test``)
        must hold one; without it ``eval_validation`` is used, else the only ``eval_*`` folder."""
        if eval_dir is not None:
            for cand in (Path(eval_dir), self.path / eval_dir):
                if (cand / "metrics.json").is_file():
                    return cand / "metrics.json"
            raise InputError(eval_dir, "no metrics.json in this evaluation folder")
        default = self.eval_dir("validation") / "metrics.json"
        if default.is_file():
            return default
        found = sorted(self.path.glob("eval_*/metrics.json"))
        return found[0] if len(found) == 1 else None
