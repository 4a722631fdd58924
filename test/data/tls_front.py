"""A shared front end for the first-flight guard's tests (e2e_sni_guard, e2e_sni_attack,
the microVM's): HTTPS on [::]:443 (IPv4 too) for any name its certificate holds, and with
--plain plain HTTP on port 80, like a CDN serving many customers on one address. Each answer
says which Host and TLS server_name it saw ("hello HOST sni=NAME"), so a test can tell
whose site a connection reached.

The handshake runs in the handler's thread under its timeout (do_handshake_on_connect=False),
not in accept: the guard resets only the client's side of a rejected connection, and a
server stuck in that handshake in accept would stall every later client.

    python3 tls_front.py CERT KEY [--plain]"""
import http.server
import socket
import ssl
import sys
import threading


class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self):
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class Handler(http.server.BaseHTTPRequestHandler):
    timeout = 5

    def do_GET(self):
        sni = getattr(self.request, "sni_seen", "-")
        body = ("hello " + (self.headers.get("Host") or "?") + " sni=" + str(sni) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *a):
        pass


def remember(sock, name, ctx):
    sock.sni_seen = name


def main():
    cert, key = sys.argv[1:3]
    tls = Server(("::", 443), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = remember
    tls.socket = ctx.wrap_socket(tls.socket, server_side=True, do_handshake_on_connect=False)
    if "--plain" in sys.argv[3:]:
        plain = Server(("::", 80), Handler)
        threading.Thread(target=plain.serve_forever, daemon=True).start()
    print("ready", flush=True)
    tls.serve_forever()


if __name__ == "__main__":
    main()
