# Rules for the report stage(s).
