"""Framework integrations: ``stratacache.contrib.django``, ``.fastapi`` and ``.flask``.

Each module imports its framework, which is an optional dependency (the extras
``stratacache[django]``, ``stratacache[fastapi]``, ``stratacache[flask]``); importing this
package alone needs none of them.
"""
