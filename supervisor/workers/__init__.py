"""What runs a worker's children, once its mode has granted the right to run them.

- child.py: the one child path. Every child of every worker kind is started, watched
  and stopped here, by the earliest of every deadline that applies to it.
- long_running.py: a long-running worker (every-node, leader and coordinated modes):
  the grant loop and the restart policy.
- cronjob.py: a cron worker: one child per claimed run, run once, its outcome recorded.

Coordination (supervisor/coordination/) decides; these obey.
"""
