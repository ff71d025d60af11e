"""The CPU memory allocator of training processes, chosen before TensorFlow allocates anything.

TensorFlow's default CPU allocator hands every tensor to malloc. glibc serves large blocks (a U-Net's activations
and gradients, megabytes each) with fresh pages and gives them back to the kernel when they are freed, so every
training step faults its working set in again, page by zero-filled page: on a 2-core EPYC (AVX2) about a million
minor page faults per step at the default `python -m unet_perf.train` size, and anywhere from none to 27 thousand
at 128² base 16, depending on each process's history, which made K = 1 against K = 10 timings come out either way
(docs/performance.md, "Where the step time goes, and the allocator fix").
TensorFlow's BFC allocator keeps freed blocks for reuse: after the first steps a step faults in almost nothing.
TF_CPU_ALLOCATOR_USE_BFC selects it in TF 1.15 and 2.x.

oneDNN builds (TF_ENABLE_ONEDNN_OPTS=1, TensorFlow's default on CPUs with AVX512-VNNI/BF16 or AMX) pool large
blocks already, so little changes there. A value the user set wins (TF_CPU_ALLOCATOR_USE_BFC=false keeps malloc).
predict does not call this: BFC never returns memory to the system, and predict's peak RSS is measured with malloc.
No TensorFlow import in this module.
"""
import os

BFC_ENV = "TF_CPU_ALLOCATOR_USE_BFC"


def prefer_bfc_allocator():
    """Select TensorFlow's BFC CPU allocator unless the environment already says; returns the value in effect.

    TensorFlow reads the variable when it creates its CPU allocator (the first CPU tensor), so training entry
    points call this before importing TensorFlow; the launcher's worker processes inherit it.
    """
    return os.environ.setdefault(BFC_ENV, "true")
