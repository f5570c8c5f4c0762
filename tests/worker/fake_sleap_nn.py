"""A fast stand-in for the ``sleap-nn`` CLI, for executor unit tests.

``train CFG overrides...``: connects a PUB to ``trainer_config.zmq.publish_port`` and a SUB
to ``controller_port`` (as sleap-nn does), publishes train_begin / epoch_begin / epoch_end /
train_end, draws a ``\\r`` progress bar, stops early on ``{"command": "stop"}``, and writes
``<ckpt_dir>/<run_name>/best.ckpt``. ``track -i D -m M -o OUT``: writes OUT (its argv as
JSON, for the tests to read); with ``--gui`` it first prints sleap-nn's JSON progress lines.
``FAKE_MODE``: ``ok`` (default), ``fail`` (exit 3 with an error on stderr), ``slow``
(many epochs, for stop/cancel tests); ``FAKE_EPOCHS`` overrides the number of epochs.
"""

import json
import os
import sys
import time
from pathlib import Path

import zmq


def overrides(args):
    out = {}
    for a in args:
        if "=" in a:
            k, v = a.split("=", 1)
            out[k] = v.strip('"')
    return out


def train(args):
    mode = os.environ.get("FAKE_MODE", "ok")
    ov = overrides(args[1:])
    print(f"fake sleap-nn training {args[0]}", flush=True)
    if mode == "fail":
        print("Traceback (most recent call last):", file=sys.stderr)
        print("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB", file=sys.stderr, flush=True)
        sys.exit(3)
    ctx = zmq.Context.instance()
    pub = ctx.socket(zmq.PUB)
    pub.connect(f"tcp://127.0.0.1:{ov['trainer_config.zmq.publish_port']}")
    ctl = ctx.socket(zmq.SUB)
    ctl.subscribe(b"")
    ctl.connect(f"tcp://127.0.0.1:{ov['trainer_config.zmq.controller_port']}")
    time.sleep(0.3)  # ZMQ slow joiner
    send = lambda event, **kw: pub.send_string(json.dumps({"what": "", "event": event, **kw}))
    send("train_begin", wandb_url=None)
    epochs = int(os.environ.get("FAKE_EPOCHS", 200 if mode == "slow" else 2))
    stopped = False
    for epoch in range(epochs):
        send("epoch_begin", epoch=epoch)
        for step in range(5):
            sys.stderr.write(f"\rEpoch {epoch}: {step + 1}/5")
            sys.stderr.flush()
            time.sleep(0.02)
            if ctl.poll(1):
                if json.loads(ctl.recv_string()).get("command") == "stop":
                    stopped = True
        sys.stderr.write("\n")
        send("epoch_end", epoch=epoch, logs={"train/loss": 1.0 / (epoch + 1), "val/loss": 1.2 / (epoch + 1)})
        if stopped:
            print("stop requested: ending training", flush=True)
            break
    run = Path(ov["trainer_config.ckpt_dir"]) / ov["trainer_config.run_name"]
    run.mkdir(parents=True, exist_ok=True)
    (run / "best.ckpt").write_bytes(b"fake checkpoint")
    (run / "training_config.yaml").write_text("fake: true\n")
    send("train_end")
    pub.close(linger=1000)
    ctl.close(linger=0)


def track(args):
    out = args[args.index("-o") + 1]
    if os.environ.get("FAKE_MODE") == "fail_track":
        print("ValueError: no model found", file=sys.stderr)
        sys.exit(1)
    if "--gui" in args:
        total = 8
        for n in range(2, total + 1, 2):
            print(json.dumps({"n_processed": n, "n_total": total, "rate": 40.0, "eta": (total - n) / 40}), flush=True)
    Path(out).write_text(json.dumps(args))
    print(f"wrote {out}")


if __name__ == "__main__":
    cmd, rest = sys.argv[1], sys.argv[2:]
    {"train": train, "track": track}[cmd](rest)
