# Rules for the text stage(s).
