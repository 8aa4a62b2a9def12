# Rules for the features stage(s).
