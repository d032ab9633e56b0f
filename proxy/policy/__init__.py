"""Who may do what: identities, ACL rules, claims, tag rules. Pure."""
