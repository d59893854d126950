"""SLURM requeue, as far as it runs without a cluster: the launcher built from the composed config
submits with the requeue settings, and the job submitit requeues (the launcher's `checkpoint`
submission, called again) continues its run from the checkpoint instead of starting over."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra._internal.callbacks import Callbacks
from hydra.core.global_hydra import GlobalHydra
from hydra.core.plugins import Plugins
from hydra.core.singleton import Singleton
from hydra.types import HydraContext

from conftest import GLUE, ROOT
from runners.config import register_resolvers

RUN = ["model=minilm", "task=rte", "method=lora", "data.max_train_samples=96", "data.max_eval_samples=32",
       "data.max_seq_len=32", "trainer.batch_size=16", "trainer.eval_every_steps=4", "trainer.max_steps=12",
       "trainer.num_threads=1", "trainer.progress=false", "trainer.checkpoint.every_steps=3"]


@pytest.fixture
def slurm_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """hydra/launcher=slurm instantiated by Hydra from the composed config (no sbatch anywhere)."""
    fake_bin = tmp_path / "bin"  # submitit's executor looks for srun; nothing is ever submitted
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}:{os.environ['PATH']}")
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = hydra_compose("config", overrides=["hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                            return_hydra_config=True)
        ctx = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=Callbacks())
        import run

        launcher = Plugins.instance().instantiate_launcher(hydra_context=ctx, task_function=run.main.__wrapped__,
                                                           config=cfg)
        yield launcher


def test_submission_carries_the_requeue_settings(slurm_launcher) -> None:
    """SlurmLauncher.launch itself builds submitit's executor from conf/hydra/launcher/slurm.yaml
    (submitit checks every parameter name); it is stopped where it would submit, and what it
    handed to submitit is checked (how submitit writes them as #SBATCH lines is submitit's)."""
    import submitit

    class Submitted(Exception):
        pass

    handed: dict = {}
    update = submitit.AutoExecutor.update_parameters

    def record(executor, **params) -> None:
        handed.update(params)
        update(executor, **params)

    def capture(executor, *args):
        raise Submitted(executor)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(submitit.AutoExecutor, "update_parameters", record)
        mp.setattr(submitit.AutoExecutor, "map_array", capture)
        with pytest.raises(Submitted) as caught:
            slurm_launcher.launch([["seed=0"]], initial_job_idx=0)
    assert caught.value.args[0]._executor.max_num_timeout == 3  # requeues after a time limit, then gives up
    assert handed["slurm_signal_delay_s"] == 120  # USR2 120 s before the limit: submitit's cue to requeue
    assert handed["slurm_additional_parameters"] == {"requeue": True}  # SLURM may requeue after node failure
    assert handed["timeout_min"] == 1440


@pytest.mark.slow
@pytest.mark.needs_glue
def test_requeued_job_continues_from_its_checkpoint(slurm_launcher, tmp_path: Path, cache_dir: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """~40 s, in process: the job is interrupted as submitit interrupts it on USR2 (its handler
    exits in the middle of training, here just after the step-6 checkpoint, between evaluations),
    then the submission that submitit requeues is called: it trains the rest from the checkpoint
    and ends with the record of an uninterrupted run."""
    import submitit

    from runners import record
    from runners.checkpoint import Checkpoint

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("GLUE_DIR", str(GLUE))
    overrides = [*RUN, f"results_dir={tmp_path / 'runs'}", f"data.cache_dir={cache_dir}"]
    job = (overrides, "hydra.sweep.dir", 0, "job_id_for_0", Singleton.get_state())  # as launch() passes it
    requeued = slurm_launcher.checkpoint(*job)  # what submitit pickles and runs again after a requeue
    assert isinstance(requeued, submitit.helpers.DelayedSubmission) and requeued.function is slurm_launcher
    pickled = tmp_path / "submitted.pkl"
    requeued.dump(pickled)

    save = Checkpoint.save

    def save_then_signal(self, state):
        save(self, state)
        if state["step"] == 6:  # mid-interval: the running loss holds two steps
            os.kill(os.getpid(), signal.SIGUSR2)

    previous = signal.signal(signal.SIGUSR2, lambda *_: sys.exit(-1))  # submitit's handler ends with this
    try:
        with monkeypatch.context() as mp:
            mp.setattr(Checkpoint, "save", save_then_signal)
            with pytest.raises(SystemExit):
                slurm_launcher(*job)
    finally:
        signal.signal(signal.SIGUSR2, previous)
    (path,) = (tmp_path / "runs").glob("train/minilm/lora/rte/*.json")
    interrupted = record.read(path)
    assert interrupted["status"] == "failed" and path.with_suffix(".ckpt").is_dir()

    submitit.helpers.DelayedSubmission.load(pickled).result()
    rec = record.read(path)
    assert rec["status"] == "finished" and rec["resumed_from_step"] == 6
    assert [h["step"] for h in rec["history"]] == [4, 8, 12]
    assert not path.with_suffix(".ckpt").exists()

    from runners.job import run_job

    run_job(hydra_compose("config", overrides=[*RUN[:-1], f"results_dir={tmp_path / 'ref'}",
                                               f"data.cache_dir={cache_dir}"]))
    (ref,) = (tmp_path / "ref").glob("train/minilm/lora/rte/*.json")
    reference = record.read(ref)
    assert reference["resumed_from_step"] is None
    assert (rec["history"], rec["selected"]) == (reference["history"], reference["selected"])
