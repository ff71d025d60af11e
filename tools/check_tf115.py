#!/usr/bin/env python
"""Static check that unet_perf only uses TensorFlow 1.15 and npu_bridge API that exists: the entry point of the
tf115check package next to this file (see its docstring).

    python tools/check_tf115.py [paths...] [--compat_dir DIR] [--root DIR]
"""
import sys

from tf115check import main  # tools/tf115check sits beside this script, so Python finds it first

if __name__ == "__main__":
    sys.exit(main())
