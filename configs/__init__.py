"""The shipped YAML configurations: the top-level configs/ folder, installed as `inat_keras.configs`."""
