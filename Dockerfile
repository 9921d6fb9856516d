# CPU image: what `make run` does, bundled model included, listening on 0.0.0.0:8080.
FROM python:3.11-slim

RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake make git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt Makefile ./
# Compiles llama-cpp-python once, in its own layer, so code changes rebuild in seconds.
RUN make install
COPY . .

ENV HOST=0.0.0.0 PORT=8080 VAR_DIR=/data/var MODELS_DIR=/data/models \
    ALLOWED_HOSTS=localhost,127.0.0.1,0.0.0.0
VOLUME ["/data"]
EXPOSE 8080
CMD ["make", "run"]
