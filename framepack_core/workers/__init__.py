"""Running jobs on engines outside the process that owns the queue: a worker process per local device
(``process``), a Ray actor per GPU of a cluster (``ray_actors``; its files travel as bytes, ``ray_files``), and
the pool that lets several of them claim jobs from the one SQLite queue (``pool``). Every kind is a ``Worker``
(``remote``): something with the engine's ``generate`` that may die, which the runner turns into a job resumed
elsewhere from its last finished section."""
