"""A real CAS server for the tests: django-cas-server (PyPI, pinned in requirements.txt), on
loopback, with its own SQLite database in a temporary directory.

    python server.py PORT SERVICE_PATTERN USER:PASSWORD:DISPLAY_NAME...

It serves CAS at http://127.0.0.1:PORT/cas/ (login, serviceValidate, proxyValidate, p3/...),
knows the users given (Django accounts: the display name is sent as the `displayName`
attribute), accepts services matching SERVICE_PATTERN (a regular expression), and prints
`ready` once it listens. It stops with its parent's signal."""

import os
import sys
import tempfile

import django
from django.conf import settings

port, pattern, *users = sys.argv[1:]
data = tempfile.mkdtemp(prefix="diplomatie-cas-")

settings.configure(
    DEBUG=False,
    SECRET_KEY="tests-only",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "django.contrib.staticfiles",
        "cas_server",
    ],
    MIDDLEWARE=[
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    ],
    TEMPLATES=[{
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {"context_processors": [
            "django.template.context_processors.request",
            "django.contrib.auth.context_processors.auth",
            "django.contrib.messages.context_processors.messages",
        ]},
    }],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.path.join(data, "cas.sqlite3")}},
    STATIC_URL="/static/",
    USE_TZ=True,
    CAS_AUTH_CLASS="cas_server.auth.DjangoAuthUser",
    # Offline: no look for a newer version at PyPI.
    CAS_NEW_VERSION_HTML_WARNING=False,
    CAS_NEW_VERSION_EMAIL_WARNING=False,
    CAS_SHOW_POWERED=False,
)
django.setup()

from django.core.management import call_command  # noqa: E402
from django.urls import include, path  # noqa: E402

urlpatterns = [path("cas/", include("cas_server.urls", namespace="cas_server"))]

call_command("migrate", verbosity=0)

from django.contrib.auth.models import User  # noqa: E402
from cas_server.models import ReplaceAttributName, ServicePattern  # noqa: E402

for spec in users:
    name, password, display = spec.split(":", 2)
    User.objects.create_user(username=name, password=password, first_name=display)
service = ServicePattern.objects.create(name="diplomatie", pattern=pattern)
ReplaceAttributName.objects.create(name="first_name", replace="displayName", service_pattern=service)

print("ready", flush=True)
call_command("runserver", f"127.0.0.1:{port}", use_reloader=False, use_threading=True, verbosity=0)
