# Rules for the train stage(s).
