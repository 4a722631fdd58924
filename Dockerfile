# Multi-stage: the same install script as CI, a release build, then a slim runtime image
# that runs as the unprivileged user dnsward. The binary carries file capabilities for the
# two things it needs (CAP_NET_BIND_SERVICE for port 53, CAP_NET_ADMIN for its nftables
# sets); the container must be granted CAP_NET_ADMIN (--cap-add NET_ADMIN), even with
# --no-nft, or the kernel refuses to run a binary whose capabilities it cannot grant.
FROM debian:bookworm-slim AS build
COPY scripts/install-deps /src/scripts/install-deps
RUN /src/scripts/install-deps build
COPY . /src
RUN cmake -S /src -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DDNSWARD_TESTS=OFF \
 && cmake --build /build

FROM debian:bookworm-slim
COPY scripts/install-deps /tmp/install-deps
COPY --from=build /build/dnsward /usr/local/bin/dnsward
RUN /tmp/install-deps runtime \
 && apt-get install -y --no-install-recommends libcap2-bin \
 && setcap cap_net_admin,cap_net_bind_service+ep /usr/local/bin/dnsward \
 && apt-get purge -y libcap2-bin && apt-get autoremove -y \
 && rm -rf /var/lib/apt/lists/* /tmp/install-deps \
 && useradd --system --no-create-home --shell /usr/sbin/nologin dnsward
USER dnsward
EXPOSE 53/udp 53/tcp
ENTRYPOINT ["dnsward", "serve"]
CMD ["--listen", "0.0.0.0:53"]
