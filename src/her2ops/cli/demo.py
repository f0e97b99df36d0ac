"""``make demo``: the whole platform on embedded defaults (SQLite, in-process, local MLflow).

Each step runs a real ``her2ops`` command in-process and prints it first, so the output doubles
as a tour of the CLI. Everything lands in ``her2ops-data/demo`` (recreated on every run). All
figures are results on *synthetic* data made by ``her2ops synth``, not on patient tissue.

Environment knobs (for a quicker look): ``HER2OPS_DEMO_PATIENTS``, ``HER2OPS_DEMO_CORES``,
``HER2OPS_DEMO_SIZE``, ``HER2OPS_DEMO_EPOCHS``, ``HER2OPS_DEMO_TRAIN=0`` (skip the model).
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import typer

# Set by main() from HER2OPS_DEMO_DIR (nothing is read from the environment at import time).
ROOT = Path("her2ops-data/demo")
SYN = ROOT / "synthetic"


def banner(title: str) -> None:
    print(f"\n=== {title} " + "=" * max(0, 70 - len(title)), flush=True)


def her2ops(*args: object, user: str | None = None, stdin: str | None = None) -> None:
    """Run one CLI command in-process, echoing it like a shell would (``stdin``: what is piped
    into it, shown as ``echo ... |``)."""
    import io

    from her2ops.cli import app

    argv = (["--as", user] if user else []) + [str(a) for a in args]
    piped = f"echo {shlex.quote(stdin)} | " if stdin is not None else ""
    print(f"$ {piped}her2ops {shlex.join(argv)}", flush=True)
    saved = sys.stdin
    if stdin is not None:
        sys.stdin = io.StringIO(stdin + "\n")
    try:
        code = app(argv, standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    finally:
        sys.stdin = saved
    if code:
        raise SystemExit(f"demo step failed: her2ops {shlex.join(argv)}")
    sys.stdout.flush()


def main() -> None:
    global ROOT, SYN
    ROOT = Path(os.environ.get("HER2OPS_DEMO_DIR", "her2ops-data/demo")).resolve()
    SYN = ROOT / "synthetic"
    started = time.perf_counter()
    patients = int(os.environ.get("HER2OPS_DEMO_PATIENTS", "150"))
    cores = int(os.environ.get("HER2OPS_DEMO_CORES", "300"))
    size = int(os.environ.get("HER2OPS_DEMO_SIZE", "512"))
    epochs = os.environ.get("HER2OPS_DEMO_EPOCHS")
    train = os.environ.get("HER2OPS_DEMO_TRAIN", "1") != "0"

    if not sys.stderr.isatty():
        # progress bars redraw as new lines in a log: fewer redraws keep the log readable
        os.environ.setdefault("TQDM_MININTERVAL", "10")
    if ROOT.exists():
        shutil.rmtree(ROOT)
    ROOT.mkdir(parents=True)
    os.environ["HER2OPS_DATA_DIR"] = str(ROOT)
    os.environ.pop("HER2OPS_DATABASE_URL", None)
    os.environ.pop("HER2OPS_MLFLOW_TRACKING_URI", None)
    from her2ops.config import get_settings

    get_settings.cache_clear()
    print(f"her2ops demo: everything goes to {ROOT} (SQLite, local MLflow store, image store)")
    print("All figures below are on SYNTHETIC cores made by 'her2ops synth', not patient data.")

    banner("1. Synthetic IHC cores, votes of five simulated pathologists, a TMA slide")
    her2ops(
        "synth",
        SYN,
        "--patients",
        patients,
        "--cores",
        cores,
        "--size",
        size,
        "--seed",
        7,
        "--contact-sheet",
        "--tma-slide",
        "--ambiguity",
        0.15,
        "--label-errors",
        0.1,
    )

    banner("2. Users and roles (the first user bootstraps; then only an admin adds users)")
    # Demo passwords (for the dashboards' login); a real lab types them at a prompt.
    her2ops("users", "add", "admin", "--role", "admin", "--password-stdin", stdin=_pw("admin"))
    for name, role in (
        [("lab", "lab_manager"), ("eng", "engineer")]
        + [(f"path{i}", "pathologist") for i in range(1, 6)]
        + [("adjudicator", "pathologist")]
    ):
        her2ops(
            "users", "add", name, "--role", role, "--password-stdin", user="admin", stdin=_pw(name)
        )

    banner("3. Ingest into the pyramidal image store, import votes (re-running changes nothing)")
    her2ops("ingest", SYN / "manifest.csv", user="lab")
    her2ops("ingest", SYN / "manifest.csv", user="lab")
    her2ops("votes", "import", SYN / "votes.csv", user="lab")
    her2ops("votes", "import", SYN / "votes.csv", user="lab")

    banner("4. Consensus by the voting protocol, patient-level splits, agreement statistics")
    her2ops("consensus", user="lab")
    her2ops("split", "create", "main", "--seed", 42, "--ratios", "0.6,0.2,0.2", user="lab")
    # the paper's kind of split beside it: the test cores class-balanced (extend keeps them so)
    her2ops("split", "create", "paper", "--seed", 42, "--balanced-test", user="lab")
    her2ops("stats", user="lab")

    banner("5. What the model sees: pyramid sampling sets of one stored core")
    first_core = _first_core()
    her2ops(
        "sample",
        first_core,
        "--profile",
        "demo",
        "--sets",
        20,
        "--seed",
        0,
        "--png",
        ROOT / "pss_contact_sheet.png",
    )

    banner("6. TMA dearraying: cores found on a synthetic slide by Hough circles")
    slide = next((SYN / "tma").glob("*.png"), None)
    if slide is not None:
        her2ops("dearray", slide, "--out", ROOT / "dearrayed")
        _compare_dearray(slide.parent / "truth.csv", ROOT / "dearrayed" / "manifest.csv")

    if train:
        from her2ops.cli.jobs import background_worker

        banner("7. Start a worker; train the 'demo' profile as a job on it (CPU, MLflow)")
        print(f"(a real 'her2ops worker' subprocess; its log: {ROOT / 'worker.log'})")
        with background_worker(log=ROOT / "worker.log"):
            her2ops(
                "jobs",
                "submit",
                "train",
                "-p",
                "split=main",
                "-p",
                "profile=demo",
                *(["-p", f"epochs={epochs}"] if epochs else []),
                "--wait",
                user="eng",
            )
            banner("8. Evaluate on the test partition with the paper's protocol (synthetic data)")
            her2ops(
                "evaluate",
                "challenger",
                "--split",
                "main",
                "--partition",
                "test",
                "--study",
                "--study-sets",
                60,
                "--draws",
                10000,
                user="eng",
            )
            banner("9. Promote to champion and score cores as a job")
            her2ops("models", "promote", "challenger", user="eng")
            her2ops("models", "list", user="eng")
            her2ops(
                "jobs",
                "submit",
                "score",
                "-p",
                "model=champion",
                "-p",
                f"cores={first_core}",
                "--wait",
                user="eng",
            )
            _active_learning()
            _ensemble(epochs=min(2, int(epochs)) if epochs else 2)
            her2ops("jobs", "list", user="eng")
        print("worker stopped")
    her2ops("labels", "export", "--split", "main", "--out", ROOT / "labels.csv", user="lab")

    banner("Done")
    print(f"data dir: {ROOT}")
    print(f"  contact sheets: {SYN / 'contact_sheet.png'}, {ROOT / 'pss_contact_sheet.png'}")
    print(
        f"  MLflow store:   {get_settings().resolved_mlflow_uri} "
        f"(browse: mlflow ui --backend-store-uri {get_settings().resolved_mlflow_uri})"
    )
    print()
    print("Dashboards on this data (Streamlit; log in with a demo user):")
    print(f"  HER2OPS_DATA_DIR={ROOT} her2ops dashboard --port 8501   -> http://127.0.0.1:8501")
    print(
        f"  lab manager: lab / {_pw('lab')}   engineer: eng / {_pw('eng')}   "
        f"pathologist: path1 / {_pw('path1')}   admin: admin / {_pw('admin')}"
    )
    print(f"demo took {time.perf_counter() - started:.0f} s")


def _ensemble(*, epochs: int) -> None:
    """Two members on bootstrap resamples of the training patients, trained as jobs by the
    worker, then evaluated beside each other with the paper's protocol."""
    from her2ops.pipelines.jobs import list_jobs

    banner(
        f"11. An ensemble: 2 members, each on a bootstrap resample of the training patients "
        f"({epochs} epochs each, short: this shows the mechanics, not a better model)"
    )
    her2ops(
        "jobs",
        "submit",
        "ensemble",
        "-p",
        "split=main",
        "-p",
        "members=2",
        "-p",
        "profile=demo",
        "-p",
        f"epochs={epochs}",
        "-p",
        "resample=bootstrap",
        "--wait",
        user="eng",
    )
    ensemble = list_jobs(actor="eng", kind="ensemble", limit=1)[0]["id"]
    her2ops("evaluate", "--ensemble", ensemble, "--split", "main", user="eng")


def _pw(user: str) -> str:
    """The demo's password of ``user`` (synthetic data only; never a real lab's practice)."""
    return f"demo-{user}-pass"


def _active_learning() -> None:
    """Flag -> queue -> simulated pathologists review (blinded) -> consensus -> retrain policy."""
    import csv

    import numpy as np

    from her2ops.pipelines.review import next_item, submit
    from her2ops.scores import SCORE_LABELS
    from her2ops.synthetic.votes import PATHOLOGIST_CONFUSION, VOTE_LABELS

    banner("10. Active learning: flag what the champion is unsure of or contradicts, review it")
    print("(the evaluation above scored the test partition: its patients are out of sample, so")
    print(" a confident prediction that contradicts the consensus marks a possible label error)")
    print("(as a 'flags' job on the worker; the same as: her2ops review build --model champion)")
    her2ops(
        "jobs",
        "submit",
        "flags",
        "-p",
        "models=champion",
        "-p",
        "top=20",
        "-p",
        "votes_needed=3",
        "--wait",
        user="eng",
    )
    her2ops("review", "list", "--status", "open", user="lab")
    with (SYN / "truth.csv").open() as fh:
        truth = {r["core"]: r for r in csv.DictReader(fh)}
    rng = np.random.default_rng(11)
    print("five simulated pathologists work through the queue, blinded (no votes, no model),")
    print("three of them per core (as: her2ops --as pathN review next; review submit ITEM SCORE):")
    reviewed = 0
    before: dict[str, dict[str, Any]] = {}  # core -> its label before the first review vote
    after: dict[str, dict[str, Any]] = {}  # core -> its label after the last one
    for name in ("path1", "path2", "path3", "path4", "path5"):
        while (view := next_item(actor=name)) is not None:
            row = truth[view["core"]]
            true = SCORE_LABELS.index(row["true_score"])
            probs = PATHOLOGIST_CONFUSION[name][true]
            score = VOTE_LABELS[int(rng.choice(len(probs), p=probs))]
            res = submit(actor=name, item=view["item"], score=score, token=view["claim"]["token"])
            reviewed += 1
            before.setdefault(view["core"], res["label_before"])
            after[view["core"]] = res["label_after"]
    changed = sum(before[c] != after[c] for c in after)
    errors = [c for c in after if truth[c].get("label_error") == "1"]
    fixed = sum(
        after[c]["score"] is not None
        and int(after[c]["score"]) == SCORE_LABELS.index(truth[c]["true_score"])
        for c in errors
    )
    print(
        f"{reviewed} review vote(s) on {len(after)} core(s); {changed} consensus label(s) "
        f"changed; {len(errors)} of these cores carried an injected label error (truth.csv), "
        f"{fixed} of them now have the true score"
    )
    her2ops("review", "list", "--status", "done", user="lab")
    her2ops("review", "retrain", "--model", "champion", user="eng")


def _compare_dearray(truth_csv: Path, manifest_csv: Path) -> None:
    """Check the dearrayed grid positions against where the slide maker put the cores."""
    import csv

    with truth_csv.open() as fh:
        truth = {(int(r["row"]), int(r["col"])) for r in csv.DictReader(fh)}
    with manifest_csv.open() as fh:
        found = {(int(r["row"]), int(r["col"])) for r in csv.DictReader(fh)}
    print(
        f"check against the slide's truth: {len(truth & found)} of {len(truth)} spots found "
        f"at the right grid position, {len(found - truth)} invented"
    )


def _first_core() -> str:
    import csv

    with (SYN / "manifest.csv").open() as fh:
        return next(csv.DictReader(fh))["core"]


if __name__ == "__main__":
    main()
