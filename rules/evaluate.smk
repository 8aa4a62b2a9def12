# Rules for the evaluate stage.
