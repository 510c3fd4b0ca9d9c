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
RUN useradd --create-home btcloan && mkdir -p /app/var && chown btcloan /app/var
USER btcloan
EXPOSE 8000
CMD ["python", "manage.py", "runserver", "0.0.0.0:8000", "--noreload"]
