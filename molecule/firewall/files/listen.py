"""TEST LISTENER for the firewall scenario: accepts TCP connections on every
port given and answers UDP datagrams on the UDP ports, so a probe can tell a
port the firewall lets through from one it drops. Stands in for the services
(nginx, oauth2-proxy, gateway, vLLM, Ollama, NFS, Ray, NCCL, rsyslog...) that do
not run in this scenario."""
import selectors
import socket
import sys

tcp_ports = [int(p) for p in sys.argv[1].split(",")]
udp_ports = [int(p) for p in sys.argv[2].split(",")] if len(sys.argv) > 2 and sys.argv[2] else []
sel = selectors.DefaultSelector()
for port in tcp_ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, "tcp")
for port in udp_ports:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    s.setblocking(False)
    sel.register(s, selectors.EVENT_READ, "udp")
while True:
    for key, _ in sel.select():
        sock = key.fileobj
        try:
            if key.data == "tcp":
                conn, _peer = sock.accept()
                conn.close()
            else:
                data, peer = sock.recvfrom(512)
                sock.sendto(b"pong:" + data, peer)
        except OSError:
            pass
