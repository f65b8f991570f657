"""Serving an api worker's socket: one module per way bytes move.

`sockets` binds the listening sockets, `acceptor` takes connections (`refusal` answers those
past the cap), `limits` holds each connection to the edge's limits until a request is served,
`coalescing` writes an answer in one send, and `server` wires them under uvicorn.
"""
