"""The training input: tf.data assembly and the fused augmentation engines."""
