# The btcloan service image: web, worker, beat and Flower all run from it.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential libpq-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements.txt .
# Runtime packages only; tests, lint and types are in requirements-dev.txt (not in the image).
RUN pip install --no-cache-dir -r requirements.txt
COPY . .
# Static files (admin, Swagger UI and ReDoc from drf-spectacular-sidecar) collected at build
# time; WhiteNoise serves them from here.
ENV DJANGO_STATIC_ROOT=/app/static
RUN python manage.py collectstatic --noinput \
    && useradd --create-home btcloan && mkdir -p /app/var && chown btcloan /app/var
USER btcloan
EXPOSE 8000
# Outside DEBUG the service refuses a known or short DJANGO_SECRET_KEY, missing
# BTCLOAN_ENCRYPTION_KEYS or missing lender keys (see deploy/production.env.example).
CMD ["gunicorn", "-c", "deploy/gunicorn.conf.py"]
