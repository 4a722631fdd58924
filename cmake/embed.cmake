# Writes the allowlist file IN into a C++ source OUT as dnsward::kDefaultAllowlist.
file(READ ${IN} text)
file(WRITE ${OUT} "namespace dnsward {\nextern const char kDefaultAllowlist[] = R\"dnsward_allow(${text})dnsward_allow\";\n}\n")
