"""A seeded chaos soak of the fleet, in the manner of Jepsen.

Run it::

    python -m tests.chaos --seed 1 --seconds 60 --store memory
    python -m tests.chaos --seed 2 --seconds 60 --store redis
    python -m tests.chaos --seed 3 --seconds 60 --store sqlite

It prints a short report (faults injected by kind, sessions checked, outcomes by kind,
``OutcomeLostError`` by the fault that caused it, each violation with its seed, session id,
times and rule) and ends with a line ending ``violations=N``; the exit status is 0 iff N is 0.
A run of ``--seconds 60`` takes 65-100 s of wall time: the nemesis' minute, then a drain in
which faults have healed and every session gets to finish (at most ``Config.drain``), the
audit, the stop. Times in the report are seconds from the nemesis' start.

The run's folder (histories, the simulator's log and ground truth in ``server.json``, the
workers' stderr in ``logs/``) is kept when there are violations (``--keep``: always), and
``python -m tests.chaos --check RUN_DIR`` checks it again without running anything;
``--explain SESSION_ID`` (with ``--check``) prints one session's whole story: the person, every
status read and by whom, every handle and result, the faults around it. ``--set FIELD=VALUE``
overrides a field of ``_config.Config`` (``--set api_per_second=1``). A seed always plays the
same fault plan and the same people; which session gets which person depends on the order the
sessions are created in, so a run is reproducible in its schedule, not to the millisecond.

What runs (everything on loopback; every child started so that it dies with the run):

- The simulator (``instantly_oauth_async.testing``) in its own process, with compressed limits
  (a 60 s window lasts 3 s; 6 inits per window, the standard limit 10 per 0.5 s, and polling
  allowed the whole of it, so the fleet runs at the server's limits and any slot it forgets
  shows as a 429; a session lives 12 s), and people on the consent pages, one per session,
  acting from the seed: allow with the mailbox asked for (or another), deny, never come, or
  come too late. What each did, and when, is the ground truth. Some status answers are acted
  on and then lost on the wire (``Faults(reset_after=...)``). Its request log (received and
  answered times of every read) is fetched at the end.
- ``--store redis``: a real redis-server (AOF, ``appendfsync always``) behind a TCP proxy whose
  latency the nemesis switches on and off, and 3 worker processes, each one ``OAuthManager`` on a
  ``RedisStore`` (session_lease 3 s, status_timeout 1 s, poll_interval 0.3 s), that start
  sessions (60% with ``expected_email``), attach to the others' (and, restarted, to their
  predecessors'), and write a history (JSON lines, one file per incarnation). SIGTERM closes the
  manager gracefully. ``--store sqlite``: the same workers on one ``SQLiteStore`` file (no
  store faults of its own yet: a SIGSTOPped worker may hold its write lock). ``--store
  memory``: 3 managers in this process on one ``MemoryStore``.
- The nemesis, from the seed, at random moments (at most two faults at once): SIGKILL a worker
  and start it again; SIGTERM it and start it again; SIGSTOP it past its lease (or shorter) then
  SIGCONT; cancel some of its handles (SIGUSR1); kill Redis and restart it from its AOF
  (``always``, or ``everysec`` set a moment before) or empty; SIGSTOP Redis shorter and longer
  than the store's 0.5 s timeout; add 20-150 ms each way to Redis; add 50-250 ms to the API. With
  a memory store: close a manager gracefully and open the next, cancel handles, API latency.

What the checker asserts is in ``tests/chaos/_checker.py``'s docstring: (1) no invented
outcome; (2) every awaiter that got an outcome got the same one; (3) ``OutcomeLostError`` only
where docs/FLEET.md's table allows it, classified by fault; (4) no overlapping status reads of
a session; (5) no status read after the one-time answer but the documented ones; (6) no 429;
(7) every session ends within its bound, every handle resolves after ``aclose()``; (8) bounded
memory; (9) ``start()`` and ``attach()`` raise only documented errors. The report's ``bounds:``
line states the bounds used.

The modules: ``_config`` (the knobs, the bounds), ``_server`` and ``_people`` (the simulator's
process), ``_worker`` (a worker: its user code and its process), ``_fleets`` (workers as
processes or in-process), ``_redisproc`` and ``_proxy`` (the store's server and its latency),
``_nemesis`` (the faults), ``_history`` (JSON lines), ``_harness`` (one run), ``_model``,
``_checker``, ``_report`` and ``_explain`` (the verdict).
"""
