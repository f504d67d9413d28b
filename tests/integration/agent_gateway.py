"""The operator's agent gateway as the agent tests play it: it verifies each signed report
and answers as told (204, a body such as a lease, no answer, or an unsigned answer)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from lparkube.adapters.agent_identity import OperatorCredentials
from lparkube_agent import protocol
from lparkube_agent.testing import DEFAULT_PARTITION


class FakeOperator:
    """Answers each verified report with ``answer``: b"" is 204, other bytes a 200 with that
    body, None drops the connection unanswered; while ``forge`` > 0 an answer goes unsigned
    (one the agent must not trust). ``reports`` holds (monotonic time received, report)."""

    def __init__(self, key: bytes, credentials: OperatorCredentials, port: int = 0) -> None:
        self.key, self.forge = key, 0
        self.answer: bytes | None = b""
        self.reports: list[tuple[float, dict]] = []
        self.verifier = protocol.Verifier(key, DEFAULT_PARTITION)
        operator = self

        class Gateway(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                message = protocol.Message(
                    protocol.TO_OPERATOR, "POST", self.path, DEFAULT_PARTITION, body
                )
                signed = operator.verifier.verify(message, self.headers)
                operator.reports.append((time.monotonic(), json.loads(body)))
                answer = operator.answer
                if answer is None:
                    return  # HTTP/1.0: the connection closes with no answer
                status = 200 if answer else 204
                self.send_response(status)
                if operator.forge > 0:
                    operator.forge -= 1
                else:
                    signature = protocol.sign_response(key, signed, status, answer)
                    for name, value in signature.headers().items():
                        self.send_header(name, value)
                if answer:
                    self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Gateway)
        self.server.socket = credentials.server_context().wrap_socket(
            self.server.socket, server_side=True
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
