# The stack's run image: a buildpack app's slug goes to /app of an image
# built FROM it, and runs as uid 10001. Same BASE as the build image, so a
# venv's python or a compiled binary finds the same interpreter and libc.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
COPY install-missing.sh /cygni/install-missing.sh
RUN sh /cygni/install-missing.sh run
ENV LANG=C.UTF-8
