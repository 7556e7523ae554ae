// Catalog §4 (AG-01 … AG-16) and RE-07 over the GRPC transport; the cases live in ag-suite.ts.
import { agentSuite } from "./ag-suite.ts";

agentSuite("grpc");
