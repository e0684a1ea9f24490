"""Run by test_distribute.py in a fresh process: trains the CNN once per JSON config given as an argument.

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

from inat_keras.config import ScratchConfig, build_config  # noqa: E402
from inat_keras.kinds import train_scratch  # noqa: E402

for values in map(json.loads, sys.argv[1:]):
    run_dir, metrics = train_scratch(build_config(ScratchConfig, values))
    print("RESULT " + json.dumps({"run_dir": str(run_dir), "metrics": metrics}), flush=True)
