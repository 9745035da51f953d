"""``recognizers predict``: the recognition of ``recognizers transcribe`` in Lightning's predict loop, so
one command scales over the GPUs of a node (``--trainer.devices 8``) and over nodes
(``--trainer.num_nodes 2``) with Lightning's DDP.

Three pieces, named in ``training/configs/predict_speech.yaml`` and ``predict_math.yaml``:

- ``FilesDataModule`` expands the inputs exactly as transcribe does (``recognizers.batch.expand_inputs``:
  files, folders, ``-r``, globs, ``@list.txt``) and gives each rank a contiguous, disjoint share of them.
- ``RecognitionModule`` loads a recognizer (``recognizers.load``) on its rank's device and recognises a
  batch of paths with transcribe's per-file error isolation (``recognizers.batch.recognize_batch``).
- ``JsonlPredictionWriter`` appends each rank's records to ``OUT/predictions.rank{R}.jsonl`` after every
  batch, and at the end rank 0 merges them into ``OUT/predictions.jsonl``: one record per input, in input
  order, the same records transcribe prints (``{"path", "task", "text", "score", "nbest", "error"}``).

Resume: the rank files are a journal. Rerunning with the same ``output_dir`` skips every input that
already has a record without ``error`` (in any rank file or in ``predictions.jsonl``), whatever the number
of ranks of either run; failed inputs are retried. Use a new ``output_dir`` for another model or options.
With several nodes, ``output_dir`` must be on a file system every node sees (rank 0 reads all files).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from recognizers.base import InputError
from recognizers.batch import expand_inputs, recognize_batch, task_of
from recognizers.writers import render, write_atomic

__all__ = ["FilesDataModule", "JsonlPredictionWriter", "RankShareSampler", "RecognitionModule"]

log = logging.getLogger(__name__)

TASKS = ("auto", "math", "text", "speech")
MERGED = "predictions.jsonl"
Item = dict[str, Any]  # {"index": int, "path": str, "task": str | None, "error": str | None}


def _error_record(path: str, task: str | None, error: str) -> dict:
    """A failed input's record, shaped like transcribe's."""
    return {"path": path, "task": task, "text": None, "score": None, "nbest": [], "error": error}


# ---- data ----


class _FileItems(Dataset):
    """``(input index, path)`` pairs → items; an input whose task cannot be told carries the error."""

    def __init__(self, items: list[tuple[int, Path]], task: str) -> None:
        self.items, self.task = items, task

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> Item:
        index, path = self.items[k]
        try:
            task, error = task_of(path, self.task), None
        except InputError as exc:
            task, error = None, str(exc)
        return {"index": index, "path": str(path), "task": task, "error": error}


class RankShareSampler(DistributedSampler):
    """Rank ``r`` of ``w`` takes items ``[n·r/w, n·(r+1)/w)``: disjoint, contiguous, never padded.

    Why not Lightning's own sampler: Lightning injects one only when ``use_distributed_sampler`` is on,
    and ``torch``'s ``DistributedSampler`` pads ranks with duplicates. Being a ``DistributedSampler``
    subclass, this one is kept as it is by Lightning whatever that flag says, so the split never depends
    on a trainer setting. Ranks may differ by one item; predict runs no collective per batch, so that is
    fine (and a rank may even get nothing, on a resumed run).
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False)
        n = len(dataset)  # type: ignore[arg-type]
        self.start, self.stop = n * rank // num_replicas, n * (rank + 1) // num_replicas
        self.num_samples = self.stop - self.start

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return self.num_samples


class FilesDataModule(L.LightningDataModule):
    """Input files for ``recognizers predict``; batches are lists of items
    ``{"index", "path", "task", "error"}`` in input order (``index``: position in the expanded inputs).

    Args:
        inputs: files, folders, globs and ``@list.txt`` files, as ``recognizers transcribe`` takes them
            (``-``, stdin, is refused: every rank would read it).
        recursive: search folders recursively (transcribe's ``-r``).
        task: ``auto`` (by file type; images need ``math`` or ``text``), ``math``, ``text`` or ``speech``.
        batch_size: inputs per ``predict_step`` on each rank.
        num_workers: DataLoader workers; they only hand out paths (the recognizer reads the files in
            ``predict_step``, with transcribe's error isolation), so 0 is usually right.
    """

    def __init__(self, inputs: list[str], recursive: bool = False, task: str = "auto", batch_size: int = 16,
                 num_workers: int = 0) -> None:
        super().__init__()
        if isinstance(inputs, str):
            inputs = [inputs]
        if not inputs:
            raise ValueError("data.inputs is empty: give files, folders, globs or @list files")
        if "-" in inputs:
            raise ValueError("data.inputs: '-' (stdin) is not supported by predict; use an @list.txt file")
        if task not in TASKS:
            raise ValueError(f"data.task must be one of {TASKS}, got {task!r}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"data.batch_size must be >= 1 and data.num_workers >= 0, got {batch_size}, "
                             f"{num_workers}")
        self.inputs, self.recursive, self.task = list(inputs), recursive, task
        self.batch_size, self.num_workers = batch_size, num_workers
        self.paths: list[Path] | None = None
        # a resumed run may leave a rank nothing to do; Lightning refuses that unless told it is intended
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def setup(self, stage: str) -> None:
        # every rank expands the same specs to the same list: expand_inputs sorts folder and glob matches
        if self.paths is None:
            self.paths = expand_inputs(self.inputs, self.recursive)

    def predict_dataloader(self) -> DataLoader:
        if self.paths is None:
            self.setup("predict")
        assert self.paths is not None
        trainer = self.trainer
        done: set[str] = set()
        for cb in trainer.callbacks if trainer is not None else []:  # type: ignore[attr-defined]
            if isinstance(cb, JsonlPredictionWriter):
                done |= cb.finished
        # skipped before the split, so the remaining work is shared evenly
        items = _FileItems([(i, p) for i, p in enumerate(self.paths) if str(p) not in done], self.task)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return DataLoader(items, batch_size=self.batch_size, sampler=RankShareSampler(items, world, rank),
                          num_workers=self.num_workers, collate_fn=list)


# ---- model ----


class RecognitionModule(L.LightningModule):
    """A recognizer in Lightning's predict loop: ``predict_step`` returns transcribe's records.

    Args:
        model: a registry name (``samba-asr``, ``posformer``...) or a ``.safetensors`` / ``.ckpt`` file, as
            ``recognizers.load`` takes it.
        beam_size: beam width (1 = greedy); None = the recognizer's default (speech 4, math 10).
        nbest: hypotheses per input in ``nbest``.
        num_groups: diverse beam search: groups of the beam (must divide ``beam_size``).
        diversity_penalty: diverse beam search: penalty for a token an earlier group chose at that step.
    """

    def __init__(self, model: str, beam_size: int | None = None, nbest: int = 1,
                 num_groups: int | None = None, diversity_penalty: float | None = None) -> None:
        super().__init__()
        # the checks of `recognizers transcribe`, so both commands accept the same options
        for name, value in (("beam_size", beam_size), ("nbest", nbest), ("num_groups", num_groups)):
            if value is not None and value < 1:
                raise ValueError(f"model.{name} must be a positive integer, got {value}")
        if beam_size is not None and num_groups is not None and beam_size % num_groups:
            raise ValueError(f"model.num_groups {num_groups} must divide model.beam_size {beam_size}")
        if beam_size is not None and nbest > beam_size:
            raise ValueError(f"model.nbest {nbest} exceeds model.beam_size {beam_size}")
        self.save_hyperparameters()
        self.model_name = str(model)
        given = {"beam_size": beam_size, "nbest": nbest, "num_groups": num_groups,
                 "diversity_penalty": diversity_penalty}
        self.options = {k: v for k, v in given.items() if v is not None}
        self.recognizer: Any = None  # loaded in setup, on this rank's device

    def setup(self, stage: str) -> None:
        import recognizers

        if self.recognizer is None:
            # Lightning sets self.device to the rank's root device before this hook (cuda:LOCAL_RANK...)
            self.recognizer = recognizers.load(self.model_name, device=self.device)
        datamodule = self._trainer.datamodule if self._trainer is not None else None
        if isinstance(datamodule, FilesDataModule) and datamodule.task not in ("auto", self.recognizer.task):
            raise ValueError(f"data.task is {datamodule.task!r} but the model {self.model_name} recognizes "
                             f"{self.recognizer.task!r}")

    def predict_step(self, batch: list[Item], batch_idx: int) -> list[dict]:
        """Records of a batch, in batch order, each with its input ``index`` (the writer orders by it).

        An input of another task than the model's, or of an unknown type, gets ``error`` and is not
        recognised; the rest go through ``recognize_batch`` (a bad file fails alone).
        """
        rec = self.recognizer
        records: dict[int, dict] = {}
        todo = []
        for item in batch:
            if item["error"] is not None:
                records[item["index"]] = _error_record(item["path"], None, item["error"])
            elif item["task"] != rec.task:
                message = (f"{item['path']}: a {item['task']} input, but the model {self.model_name} "
                           f"recognizes {rec.task} (set data.task, or another model.model)")
                records[item["index"]] = _error_record(item["path"], item["task"], message)
            else:
                todo.append(item)
        if todo:
            found = recognize_batch(rec, [Path(i["path"]) for i in todo], self.options)
            records.update((i["index"], r) for i, r in zip(todo, found, strict=True))
        return [{"index": item["index"], **records[item["index"]]} for item in batch]


# ---- output ----


def _read_records(path: Path) -> Iterator[dict]:
    """Records of a JSON-lines file; a line cut short by a killed run (the last one) is skipped."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            try:
                record = json.loads(line)
            except ValueError:
                log.warning("%s:%d: skipping a malformed line (an interrupted write?)", path, number)
                continue
            if isinstance(record, dict) and isinstance(record.get("path"), str):
                yield record


def _better(new: dict, old: dict | None) -> bool:
    """Whether ``new`` replaces ``old`` for the same input: a success beats an error; else the later wins."""
    return old is None or new.get("error") is None or old.get("error") is not None


class JsonlPredictionWriter(BasePredictionWriter):
    """Each rank appends its records to ``output_dir/predictions.rank{R}.jsonl`` (flushed and fsynced after
    every batch, so a killed run loses at most the batch in flight); at the end rank 0 merges all rank
    files into ``output_dir/predictions.jsonl`` (one record per input, input order, written atomically).

    Works with ``FilesDataModule``, whose input list gives the order and the resume set (``finished``).

    Args:
        output_dir: folder of the rank files and the merged file (shared by all nodes).
    """

    def __init__(self, output_dir: str) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir)
        self.finished: set[str] = set()  # paths that already have a record without error
        self._file: Any = None

    def _sources(self) -> list[Path]:
        """Files holding records, oldest kind first: a previous merge, then the rank files."""
        merged = self.output_dir / MERGED
        ranks = sorted(self.output_dir.glob("predictions.rank*.jsonl"))
        return ([merged] if merged.is_file() else []) + ranks

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "predict":
            return
        if not isinstance(trainer.datamodule, FilesDataModule):
            raise TypeError(f"JsonlPredictionWriter needs a FilesDataModule (it orders and resumes by its "
                            f"inputs), got {type(trainer.datamodule).__name__}")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.finished = {r["path"] for src in self._sources() for r in _read_records(src)
                         if r.get("error") is None}
        # no rank may append before every rank has read the same journal, or the ranks' shares would differ
        trainer.strategy.barrier("predictions_read")
        if self.finished:
            log.info("%s: resuming, %d inputs already done", self.output_dir, len(self.finished))

    def on_predict_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        path = self.output_dir / f"predictions.rank{trainer.global_rank}.jsonl"
        if path.is_file() and path.stat().st_size:
            with open(path, "rb") as f:  # a killed run may have cut the last line: start a new one
                f.seek(-1, os.SEEK_END)
                cut = f.read(1) != b"\n"
        else:
            cut = False
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115  (open for the whole run)
        if cut:
            self._file.write("\n")

    def write_on_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int) -> None:
        self._file.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in prediction))
        self._file.flush()
        os.fsync(self._file.fileno())

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule,
                     exception: BaseException) -> None:
        self._close()

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Merge on rank 0 once every rank is done. In teardown, not on_predict_end: a rank whose share
        is empty skips the predict loop and its hooks, but always reaches teardown."""
        if stage != "predict":
            return
        self._close()
        trainer.strategy.barrier("predictions_written")
        if trainer.is_global_zero:
            self.merge(trainer.datamodule.paths)

    def merge(self, paths: list[Path]) -> Path:
        """Write ``predictions.jsonl``: the best record of each of ``paths``, in that order, without the
        journal's ``index`` (the inputs may have changed since a resumed run wrote it)."""
        wanted = {str(p) for p in paths}
        best: dict[str, dict] = {}
        for src in self._sources():
            for record in _read_records(src):
                key = record["path"]
                if key in wanted and _better(record, best.get(key)):
                    best[key] = {k: v for k, v in record.items() if k != "index"}
        missing = [str(p) for p in paths if str(p) not in best]
        if missing:
            log.warning("%d inputs have no record (first: %s)", len(missing), missing[0])
        records = [best[str(p)] for p in paths if str(p) in best]
        target = self.output_dir / MERGED
        write_atomic(target, "".join(render(r, "jsonl") for r in records))
        failed = sum(r["error"] is not None for r in records)
        print(f"{len(records) - failed} ok, {failed} failed: {target}", file=sys.stderr)
        return target
