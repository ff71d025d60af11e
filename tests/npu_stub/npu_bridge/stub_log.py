"""The stand-in's call record (not part of the real npu_bridge): a list of (name, arguments dict)."""

CALLS = []


def record(name, **arguments):
    CALLS.append((name, arguments))


def calls_named(name):
    return [arguments for called, arguments in CALLS if called == name]
