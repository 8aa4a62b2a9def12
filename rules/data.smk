# Rules for the data stage(s).
