"""The MUST of the spec each kind of failure breaks: every failure message starts with its label."""

MUSTS = {
    "out": "spec 4: output",
    "out_dtype": "spec 4: output dtype",
    "stats": "spec 7a: stats",
    "state": "spec 5: state update",
    "eval state": "spec 3: eval changes no state",
    "nonfinite state": "spec 5: non-finite data never reaches the state",
    "grad": "spec 7: gradients",
    "crash": "spec 10: every vector runs",
    "config class": "spec 2: validation error class",
    "config argument": "spec 2: the message names the argument",
    "call class": "spec 8: error class",
    "call argument": "spec 8: the message names the argument",
    "failed call state": "spec 5: a failed call changes no state",
    "trajectory": "spec 10: trajectory parity",
    "checkpoint": "spec 9: portable checkpoint",
    "portable": "spec 9: a loader refuses what the cast would change",
    "original": "spec 11: training equals aion-torch 1.0.2",
}
