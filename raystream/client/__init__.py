"""Client-side API (producers, consumers, admin) that talks to raystream actors."""
