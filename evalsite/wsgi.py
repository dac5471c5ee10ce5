"""The WSGI application gunicorn serves (README "Production": ``gunicorn evalsite.wsgi --preload ...``).

With ``--preload`` this module runs once in gunicorn's master before it forks the workers, so what is warmed here
is warm in every worker from its first request (a cold worker's first request took 1.4 s): the URL patterns and
the view modules they import, the rater's templates. Nothing here opens a database connection, which forked
workers would share.
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "evalsite.settings")
application = get_wsgi_application()


def _warm() -> None:
    from django.template.loader import get_template
    from django.urls import get_resolver

    get_resolver().url_patterns  # imports every view module and compiles the patterns
    for name in ("annotation/rater/vote.html", "annotation/rater/consent.html", "annotation/rater/message.html"):
        get_template(name)


_warm()
