"""Run by test_distribute.py in a fresh process: one training run per JSON config given as an argument
(the kind of run under "kind": scratch, the default, or finetune).

Devices must be set before the backend starts: the test passes XLA_FLAGS for JAX, and TEST_CPU_DEVICES
asks for that many logical CPUs under TensorFlow.
"""

import json
import os
import sys

import keras

if keras.backend.backend() == "tensorflow" and os.environ.get("TEST_CPU_DEVICES"):
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * int(os.environ["TEST_CPU_DEVICES"]))

from inat_keras.config import build_config  # noqa: E402
from inat_keras.training.kinds import KINDS  # noqa: E402

for values in map(json.loads, sys.argv[1:]):
    kind = KINDS[values.pop("kind", "scratch")]
    run_dir, metrics = kind.train(build_config(kind.config_class, values))
    print("RESULT " + json.dumps({"run_dir": str(run_dir), "metrics": metrics}), flush=True)
