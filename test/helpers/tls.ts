// A throwaway self-signed certificate for localhost and 127.0.0.1 (it is its own CA), for tests
// of TLS listeners and upstreams.
import { join } from "node:path";
import { tempDir } from "./proxy.ts";

export function selfSignedCert(): { cert: string; key: string } {
  const dir = tempDir();
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  const gen = Bun.spawnSync(
    ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
    { stderr: "ignore" },
  );
  if (gen.exitCode !== 0) throw new Error("openssl failed");
  return { cert, key };
}
