# The stack's build image: buildpack apps are compiled in a container of
# it, with only the app's source (/app) and cache (/cache) mounted. BASE is
# config key `stack_base_image` (default debian:bookworm-slim); the run
# image starts from the same BASE, so what is compiled here runs there.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
COPY install-missing.sh /cygni/install-missing.sh
RUN sh /cygni/install-missing.sh build
# The buildpacks Cygni ships (config key `buildpacks_dir`), baked in so the
# build container needs no host directory but the app's.
COPY buildpacks /cygni/buildpacks
ENV LANG=C.UTF-8 STACK=cygni
WORKDIR /app
