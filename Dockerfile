# Multi-stage: the same install script as CI, a release build, then a slim runtime image.
FROM debian:bookworm-slim AS build
COPY scripts/install-deps /src/scripts/install-deps
RUN /src/scripts/install-deps build
COPY . /src
RUN cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDNSWARD_TESTS=OFF \
 && cmake --build /build

FROM debian:bookworm-slim
COPY scripts/install-deps /tmp/install-deps
RUN /tmp/install-deps runtime && rm -rf /var/lib/apt/lists/* /tmp/install-deps
COPY --from=build /build/dnsward /usr/local/bin/dnsward
EXPOSE 53/udp 53/tcp
ENTRYPOINT ["dnsward", "serve"]
CMD ["--listen", "0.0.0.0:53"]
