"""Pure state and rules of raystream (no Ray, no I/O, no clock reads): validated names, the partitioner,
replica placement, the partition state machine. Actors call these and perform the effects."""
