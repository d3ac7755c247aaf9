"""Django for the integration tests: settings, a sqlite test database in memory, Django's
own cache test app (``django_suite``), and a real redis-server for the Django backend.

Django's settings are process-wide and its test classes read ``CACHES`` when they are
defined, so the server starts at import (``django_suite``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import django
import pytest
from django.conf import settings

from django_suite import DJANGO_REDIS, DJANGO_REDIS_URL, django_tests_dir

sys.path.insert(0, str(django_tests_dir()))

if not settings.configured:
    settings.configure(
        SECRET_KEY="stratacache-tests-not-a-real-secret",
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "cache",  # Django's own cache test app (its Poll model)
            "strata_djapp",
        ],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        CACHES={
            "default": {
                "BACKEND": "stratacache.contrib.django.StrataCache",
                "LOCATION": DJANGO_REDIS_URL,
                "OPTIONS": {"serializer": "pickle", "redis_timeout": 2.0},
            }
        },
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[],
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates"}],
    )
    django.setup()

urlpatterns: list[object] = []


@pytest.fixture(scope="session", autouse=True)
def django_environment() -> Iterator[None]:
    """The Redis of the Django backend, and Django's test environment and database."""
    from django.db import connection
    from django.test.utils import setup_test_environment, teardown_test_environment

    from stratacache.contrib import django as strata_django

    setup_test_environment()
    old_name = connection.creation.create_test_db(verbosity=0, autoclobber=True)
    try:
        yield
    finally:
        connection.creation.destroy_test_db(old_name, verbosity=0)
        teardown_test_environment()
        strata_django.shutdown()
        DJANGO_REDIS.close()
