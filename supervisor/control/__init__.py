"""The local control socket: `supervisor ps`, `stop`, `start`, `restart`, `signal` and
`logs` for the workers of one node (issue 15).

- paths.py: where a node's socket lives (the same rule for server and client);
- protocol.py: the requests and answers, JSON lines (documented there and in README);
- server.py: the asyncio server `supervisor run` starts before any worker;
- client.py: the commands' end (supervisor.cli_local);
- logbuffer.py: the last lines of each worker's output, for `logs`;
- rows.py: `ps`'s rows from what each worker says of itself (`WorkerFacts`).

The server knows no worker: what a request does is the Supervisor's (supervisor.app),
handed to it as a callable.
"""
