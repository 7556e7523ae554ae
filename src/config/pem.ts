// Certificate and key files checked at load: `validate` (and a reload) names a file the TLS stack
// would refuse, instead of start-up failing with "Failed to create HTTP server".
import { X509Certificate, createPrivateKey } from "node:crypto";

export type PemKind = "cert" | "key";

/** Which config nodes name which kind of PEM file. */
export const PEM_KINDS: Record<string, PemKind | undefined> = {
  "cert-file": "cert",
  "ca-file": "cert",
  "ca-cert": "cert",
  "client-cert": "cert",
  "key-file": "key",
  "client-key": "key",
};

const CERT_BLOCK = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** Why `text` is not a usable PEM file of `kind`, or null. */
export function pemProblem(text: string, kind: PemKind): string | null {
  if (kind === "key") {
    try {
      createPrivateKey(text);
      return null;
    } catch (err) {
      return `not a PEM private key (${(err as Error).message})`;
    }
  }
  const blocks = text.match(CERT_BLOCK);
  if (blocks === null) return "no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)";
  for (let i = 0; i < blocks.length; i++) {
    try {
      new X509Certificate(blocks[i]!);
    } catch (err) {
      return `certificate ${i + 1} of ${blocks.length} does not parse (${(err as Error).message})`;
    }
  }
  return null;
}

/** Why the private key in `keyText` does not belong to the first certificate in `certText`, or null (also when either does not parse: pemProblem says that). */
export function keyMismatch(certText: string, keyText: string): string | null {
  try {
    const first = certText.match(CERT_BLOCK)?.[0];
    if (first === undefined) return null;
    return new X509Certificate(first).checkPrivateKey(createPrivateKey(keyText)) ? null : "the key does not belong to the certificate";
  } catch {
    return null;
  }
}
