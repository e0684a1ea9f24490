"""Run by test_chaos.py in a fresh process: the `run.py` command given as arguments, killed with SIGKILL
at the point named by CHAOS_KILL_AT (scan, epoch, checkpoint, backup, evaluation), or left alone."""

import os
import signal
import sys

import keras

from inat_keras.cli import main
from inat_keras.data import splits
from inat_keras.training import callbacks, loop


def die():
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGKILL)


point = os.environ.get("CHAOS_KILL_AT")
if point == "scan":
    splits._read_header = lambda path: die()
elif point == "epoch":
    callbacks.EpochTimer.on_train_batch_end = lambda self, batch, logs=None: die() if batch == 1 else None
elif point == "checkpoint":
    callbacks.RunCheckpoint.publish = lambda self, epoch: die()  # model.partial.keras written, not renamed
elif point == "backup":
    save_weights = keras.Model.save_weights

    def half_written(self, filepath, *args, **kwargs):
        if callbacks.read_history(os.path.join(os.path.dirname(os.path.dirname(filepath)), "history.csv"))[1:]:
            open(filepath, "wb").write(b"\x89HDF\r\n")  # the second epoch's backup, cut off
            die()
        return save_weights(self, filepath, *args, **kwargs)

    keras.Model.save_weights = half_written
elif point == "evaluation":
    loop.evaluate_model = lambda *args, **kwargs: die()

sys.exit(main(sys.argv[1:]))
