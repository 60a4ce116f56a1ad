"""What every stage may use, and which imports no other stage: writing files atomically (:mod:`.storage`),
seeds and RNG states (:mod:`.seeding`), the CPU cores this process may use and whether they are shared
(:mod:`.cpu_threads`), the C allocator's reuse of freed memory (:mod:`.allocator`), and the profiles ``smoke``, ``cpu`` and ``gpu`` with their settings (:mod:`.profiles`).
"""
